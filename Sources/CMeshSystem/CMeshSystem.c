#define _GNU_SOURCE  // accept4, struct ucred

#include "CMeshSystem.h"

#include <stdlib.h>  // (on glibc, defines __GLIBC__ through features.h)

#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
#include <malloc.h>

int cmesh_heap_stats(size_t *in_use, size_t *free_retained) {
    struct mallinfo2 m = mallinfo2();
    // uordblks: bytes in use in the arenas; hblkhd: bytes in chunks mmapped on their own (large ones).
    *in_use = m.uordblks + m.hblkhd;
    // fordblks: free bytes the allocator keeps for reuse (resident when they were touched before).
    *free_retained = m.fordblks;
    return 1;
}
#else
int cmesh_heap_stats(size_t *in_use, size_t *free_retained) {
    *in_use = 0;
    *free_retained = 0;
    return 0;
}
#endif

// MARK: - Sockets for the listener hand-over (`upgrade.socket`, `--takeover`)

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

int cmesh_tcp_listen(const struct sockaddr *address, socklen_t length, int backlog) {
    int fd = socket(address->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 || bind(fd, address, length) != 0 ||
        listen(fd, backlog) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static int unix_address(const char *path, struct sockaddr_un *out) {
    memset(out, 0, sizeof *out);
    out->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof out->sun_path) return -ENAMETOOLONG;
    strcpy(out->sun_path, path);
    return 0;
}

int cmesh_unix_listen(const char *path, int backlog) {
    struct sockaddr_un a;
    int r = unix_address(path, &a);
    if (r != 0) return r;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    unlink(path);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || chmod(path, 0600) != 0 || listen(fd, backlog) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int cmesh_unix_connect(const char *path) {
    struct sockaddr_un a;
    int r = unix_address(path, &a);
    if (r != 0) return r;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int cmesh_unix_accept(int listener, int timeout_ms) {
    struct pollfd p = {.fd = listener, .events = POLLIN};
    int n = poll(&p, 1, timeout_ms);
    if (n < 0) return -errno;
    if (n == 0) return -EAGAIN;
    int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int cmesh_set_timeouts(int fd, int timeout_ms) {
    struct timeval t = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &t, sizeof t) != 0) return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &t, sizeof t) != 0) return -errno;
    return 0;
}

long cmesh_peer_uid(int fd) {
#ifdef SO_PEERCRED
    struct ucred c;
    socklen_t length = sizeof c;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c, &length) != 0) return -1;
    return (long)c.uid;
#else
    (void)fd;
    return -1;
#endif
}

#define CMESH_MAX_FDS 64

int cmesh_send_with_fds(int socket, const void *bytes, size_t length, const int *fds, int count) {
    if (count < 0 || count > CMESH_MAX_FDS || length == 0) return -EINVAL;
    struct iovec io = {.iov_base = (void *)bytes, .iov_len = length};
    union {
        char buffer[CMSG_SPACE(sizeof(int) * CMESH_MAX_FDS)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1};
    if (count > 0) {
        m.msg_control = control.buffer;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * count);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * count);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * count);
    }
    ssize_t sent;
    do {
        sent = sendmsg(socket, &m, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    if (sent < 0) return -errno;
    // The descriptors went with the first byte; a short write's rest goes plainly.
    size_t done = (size_t)sent;
    while (done < length) {
        ssize_t n = send(socket, (const char *)bytes + done, length - done, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        done += (size_t)n;
    }
    return 0;
}

long cmesh_receive_with_fds(int socket, void *bytes, size_t capacity, int *fds, int max_fds, int *fd_count) {
    *fd_count = 0;
    struct iovec io = {.iov_base = bytes, .iov_len = capacity};
    union {
        char buffer[CMSG_SPACE(sizeof(int) * CMESH_MAX_FDS)];
        struct cmsghdr align;
    } control;
    struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = control.buffer, .msg_controllen = sizeof control.buffer};
    ssize_t n;
    do {
        n = recvmsg(socket, &m, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *received = (int *)CMSG_DATA(c);
        for (int i = 0; i < count; i++) {
            if (*fd_count < max_fds) {
                fds[(*fd_count)++] = received[i];
            } else {
                close(received[i]);
            }
        }
    }
    return (long)n;
}

// MARK: - Resident code pages

#include <stdio.h>
#include <sys/mman.h>

// A mapping of the executable `cmesh_release_code_pages` may drop: code (r-xp), or read-only data
// (r--p: constants, Swift type metadata records, unwind tables) none of whose pages was ever written.
// A RELRO mapping is r--p too, but the loader wrote its relocations before protecting it: its written
// pages are private copies (smaps `Anonymous`, or `Swap` once swapped out), and dropping them would
// lose those writes.
static int cmesh_droppable(const char *perms, unsigned long written_kb) {
    if (strcmp(perms, "r-xp") == 0) return 1;
    return strcmp(perms, "r--p") == 0 && written_kb == 0;
}

long cmesh_release_code_pages(void) {
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return -errno;
    exe[n] = 0;
    // smaps, not maps: a mapping's `Anonymous:` and `Swap:` lines (its pages written since it was
    // mapped) follow its header line; a candidate is decided at its last line, `VmFlags:`.
    FILE *smaps = fopen("/proc/self/smaps", "re");
    if (smaps == NULL) return -errno;
    char line[4096 + 256];
    long total = 0;
    unsigned long start = 0, end = 0;
    char perms[8] = "";
    int candidate = 0;
    unsigned long written_kb = 0;
    while (fgets(line, sizeof line, smaps) != NULL) {
        unsigned long a, b;
        char p[8];
        int path_at = 0;
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %n", &a, &b, p, &path_at) >= 3 && path_at > 0) {
            // A mapping's header line: the executable's own mappings only.
            char *path = line + path_at;
            size_t len = strlen(path);
            if (len > 0 && path[len - 1] == '\n') path[len - 1] = 0;
            candidate = strcmp(path, exe) == 0 && (strcmp(p, "r-xp") == 0 || strcmp(p, "r--p") == 0);
            start = a;
            end = b;
            memcpy(perms, p, sizeof perms);
            written_kb = 0;
            continue;
        }
        if (!candidate) continue;
        unsigned long kb;
        if (sscanf(line, "Anonymous: %lu kB", &kb) == 1 || sscanf(line, "Swap: %lu kB", &kb) == 1) {
            written_kb += kb;
        } else if (strncmp(line, "VmFlags:", 8) == 0) {
            candidate = 0;
            if (!cmesh_droppable(perms, written_kb)) continue;
            if (madvise((void *)start, end - start, MADV_DONTNEED) == 0) total += (long)(end - start);
        }
    }
    fclose(smaps);
    return total;
}
