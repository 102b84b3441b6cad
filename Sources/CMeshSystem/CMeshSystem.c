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
