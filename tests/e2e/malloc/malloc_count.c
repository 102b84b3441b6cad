// An LD_PRELOAD interposer that counts the C heap allocations of a process (malloc, calloc,
// realloc, posix_memalign, aligned_alloc, memalign) for the allocation-budget test
// (test_alloc_budget.py). SIGUSR2 writes the count, in decimal, to the file named by
// MALLOC_COUNT_FILE. The allocations themselves are glibc's (__libc_*), unchanged.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static atomic_ulong count;
static char path[4096];

void *malloc(size_t n) {
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    return __libc_malloc(n);
}

void *calloc(size_t a, size_t b) {
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    return __libc_calloc(a, b);
}

void *realloc(void *p, size_t n) {
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    return __libc_realloc(p, n);
}

void *memalign(size_t alignment, size_t n) {
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    return __libc_memalign(alignment, n);
}

void *aligned_alloc(size_t alignment, size_t n) {
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    return __libc_memalign(alignment, n);
}

int posix_memalign(void **out, size_t alignment, size_t n) {
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    if (alignment < sizeof(void *) || (alignment & (alignment - 1)) != 0) return EINVAL;
    void *p = __libc_memalign(alignment, n);
    if (p == NULL) return ENOMEM;
    *out = p;
    return 0;
}

// Async-signal-safe: no stdio, no allocation.
static void dump(int sig) {
    (void)sig;
    int saved = errno;
    char digits[32];
    int i = sizeof digits;
    unsigned long v = atomic_load_explicit(&count, memory_order_relaxed);
    digits[--i] = '\n';
    do {
        digits[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0 && i > 0);
    char tmp[4200];
    size_t n = strlen(path);
    memcpy(tmp, path, n);
    memcpy(tmp + n, ".tmp", 5);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        ssize_t w = write(fd, digits + i, sizeof digits - (size_t)i);
        (void)w;
        close(fd);
        rename(tmp, path);
    }
    errno = saved;
}

__attribute__((constructor)) static void start(void) {
    const char *p = getenv("MALLOC_COUNT_FILE");
    if (p == NULL || strlen(p) >= sizeof path) return;
    strcpy(path, p);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = dump;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR2, &sa, NULL);
}
