#ifndef CMESHSYSTEM_H
#define CMESHSYSTEM_H

#include <stddef.h>
#include <sys/socket.h>

/// The C library's heap, as glibc's mallinfo2 reports it (all arenas and mmapped chunks).
/// Returns 0 when the C library has no mallinfo2 (not glibc), and then leaves both outputs 0.
int cmesh_heap_stats(size_t *in_use, size_t *free_retained);

/// A listening TCP socket (non-blocking, close-on-exec, SO_REUSEADDR) bound to `address`.
/// Returns the descriptor, or -errno.
int cmesh_tcp_listen(const struct sockaddr *address, socklen_t length, int backlog);

/// A listening Unix stream socket at `path` (close-on-exec, mode 0600). An existing file at `path`
/// is replaced. Returns the descriptor, or -errno.
int cmesh_unix_listen(const char *path, int backlog);

/// A Unix stream socket connected to `path` (blocking, close-on-exec). Returns it, or -errno.
int cmesh_unix_connect(const char *path);

/// Accepts a connection on `listener`, waiting at most `timeout_ms` (blocking, close-on-exec
/// result). Returns the descriptor, -EAGAIN on timeout, or -errno.
int cmesh_unix_accept(int listener, int timeout_ms);

/// Sets both send and receive timeouts of a blocking socket.
int cmesh_set_timeouts(int fd, int timeout_ms);

/// The user ID of the process on the other end of a Unix socket (SO_PEERCRED), or -1.
long cmesh_peer_uid(int fd);

/// Sends `length` bytes and, with them, `count` descriptors (SCM_RIGHTS; at most 64).
/// Returns 0, or -errno.
int cmesh_send_with_fds(int socket, const void *bytes, size_t length, const int *fds, int count);

/// Receives up to `capacity` bytes and the descriptors sent with them (at most `max_fds`; any
/// beyond are closed). Returns the byte count (0 at end of stream) and sets `*fd_count`, or -errno.
long cmesh_receive_with_fds(int socket, void *bytes, size_t capacity, int *fds, int max_fds, int *fd_count);

/// Drops this process's mappings of its own executable's code and read-only data pages (the
/// read-only mappings of /proc/self/exe: executable ones, and the others none of whose pages was
/// written, which leaves RELRO out) with MADV_DONTNEED: the pages stay in the page cache, shared, and
/// fault back in (minor faults) when used again, so the resident set becomes the code and constants
/// actually in use. Unwritten pages are the file's, so nothing is lost. Returns the bytes advised, or
/// -errno.
long cmesh_release_code_pages(void);

#endif
