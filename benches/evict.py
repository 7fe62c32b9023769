"""Drops a file's pages from the page cache, as a pod's first start on a node finds a binary.

The kernel maps cached pages around each page fault, so a binary that is all in the cache (just
copied or linked) shows a larger RSS than the same binary read cold. Dirty pages cannot be
dropped, so the file is written back first.

    python3 benches/evict.py FILE
"""
import os
import sys

fd = os.open(sys.argv[1], os.O_RDONLY)
os.fsync(fd)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
