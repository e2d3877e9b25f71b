#!/usr/bin/env bash
# Fetch the current Debian (trixie) Neovim and the libraries it needs into DIR, unpacked, and
# write DIR/bin/nvim: a wrapper that runs it with its own dynamic loader and glibc, so that it
# runs on an older Debian (bookworm ships 0.7.2). For testing the plugin on a current release:
#   editors/nvim/scripts/fetch-current-nvim.sh ~/.cache/nextab/nvim-current
#   NEXTAB_NVIM="nvim,$HOME/.cache/nextab/nvim-current/bin/nvim" pytest tests/test_nvim.py
set -euo pipefail
dir=$(realpath -m "${1:?usage: fetch-current-nvim.sh DIR}")
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=(neovim neovim-runtime libc6 libgcc-s1 libluajit-5.1-2 libmsgpack-c2 libtree-sitter0.22
          libunibilium4 libuv1t64 libvterm0 lua-lpeg lua-luv)
mkdir -p "$dir/debs" "$dir/root" "$dir/bin"
curl -fsS "$mirror/dists/trixie/main/binary-amd64/Packages.xz" | xz -dc > "$dir/Packages"
for package in "${packages[@]}"; do
  file=$(awk -v P="$package" '$1 == "Package:" {p = $2} $1 == "Filename:" && p == P {print $2; exit}' "$dir/Packages")
  [ -n "$file" ] || { echo "fetch-current-nvim: $package is not in trixie" >&2; exit 1; }
  curl -fsS -o "$dir/debs/$(basename "$file")" "$mirror/$file"
  dpkg-deb -x "$dir/debs/$(basename "$file")" "$dir/root"
done
root="$dir/root"
cat > "$dir/bin/nvim" <<WRAPPER
#!/bin/sh
export VIMRUNTIME="$root/usr/share/nvim/runtime"
export LUA_CPATH="$root/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;;"
exec "$root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "$root/usr/lib/x86_64-linux-gnu" "$root/usr/bin/nvim" "\$@"
WRAPPER
chmod +x "$dir/bin/nvim"
"$dir/bin/nvim" --version | head -1
