#!/bin/sh
# bin/NAME in the unpacked bundle links here: runs libexec/NAME through the bundle's own dynamic
# loader and libraries, so whatever glibc the node has does not matter. argv[0] stays NAME.
top=${0%/bin/*}
name=${0##*/}
exec "$top/lib/ld-linux-x86-64.so.2" --library-path "$top/lib" --argv0 "$name" "$top/libexec/$name" "$@"
