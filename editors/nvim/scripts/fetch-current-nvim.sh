#!/usr/bin/env bash
# Fetch a newer Debian suite's Neovim and the libraries it needs into DIR, unpacked, and write
# DIR/bin/nvim: a wrapper that runs it with its own dynamic loader and glibc, so that it runs on
# an older Debian (bookworm ships 0.7.2). SUITE: trixie (default; 0.10.4), forky or sid (0.12).
# For testing the plugin on current releases:
#   editors/nvim/scripts/fetch-current-nvim.sh ~/.cache/nextab/nvim-trixie trixie
#   editors/nvim/scripts/fetch-current-nvim.sh ~/.cache/nextab/nvim-forky forky
#   NEXTAB_NVIM="nvim,$HOME/.cache/nextab/nvim-trixie/bin/nvim,$HOME/.cache/nextab/nvim-forky/bin/nvim" \
#     pytest tests/test_nvim.py
set -euo pipefail
dir=$(realpath -m "${1:?usage: fetch-current-nvim.sh DIR [SUITE]}")
suite=${2:-trixie}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$dir/debs" "$dir/root" "$dir/bin"
curl -fsS "$mirror/dists/$suite/main/binary-amd64/Packages.xz" | xz -dc > "$dir/Packages"

# neovim, neovim-runtime and what they depend on, transitively (first alternatives; libc6's own
# dependencies included: the wrapper runs nothing from the host but the kernel).
field() {  # field PACKAGE NAME: the value of NAME in PACKAGE's stanza
  awk -v P="$1" -v F="$2:" '$1 == "Package:" {p = $2} p == P && $1 == F {sub(/^[^ ]+ /, ""); print; exit}' "$dir/Packages"
}
wanted=(neovim neovim-runtime)
declare -A seen=()
while [ ${#wanted[@]} -gt 0 ]; do
  package=${wanted[0]}
  wanted=("${wanted[@]:1}")
  [ -z "${seen[$package]:-}" ] || continue
  seen[$package]=1
  file=$(field "$package" Filename)
  [ -n "$file" ] || { echo "fetch-current-nvim: $package is not in $suite" >&2; exit 1; }
  curl -fsS -o "$dir/debs/$(basename "$file")" "$mirror/$file"
  dpkg-deb -x "$dir/debs/$(basename "$file")" "$dir/root"
  depends="$(field "$package" Pre-Depends), $(field "$package" Depends)"
  for dep in $(echo "$depends" | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/:any//' | tr -d ' '); do
    wanted+=("$dep")
  done
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
