#ifndef CMESHSYSTEM_H
#define CMESHSYSTEM_H

#include <stddef.h>

/// The C library's heap, as glibc's mallinfo2 reports it (all arenas and mmapped chunks).
/// Returns 0 when the C library has no mallinfo2 (not glibc), and then leaves both outputs 0.
int cmesh_heap_stats(size_t *in_use, size_t *free_retained);

#endif
