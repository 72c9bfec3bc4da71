#!/usr/bin/env bash
# Builds a ~200 M-token English corpus for GPU experiments from Debian packages, as JSON Lines, and (with
# --prepare) tokenizes it into shards. NEVER COMMIT ITS OUTPUT: the RFCs are under the IETF's terms (Debian
# non-free), the dictionary and manuals under GPL/PSF/Artistic terms; they are for local experiments only.
#
#   bash data/scripts/build_large_corpus.sh [--out corpus/large] [--prepare [--shards out/large]]
#
# Sources (downloaded with `apt-get download` through a private apt configuration that adds Debian's non-free
# component without touching the system's sources; nothing is installed):
#   doc-rfc-*        8,800+ RFCs as plain text            -> rfc.jsonl      (one document per RFC)
#   dict-gcide       GNU Collaborative Int'l Dictionary   -> gcide.jsonl    (markup stripped, ~64 KB chunks)
#   python3.11-doc   Python documentation sources (.rst)  -> python-doc.jsonl (one document per page)
#   perl-doc         Perl manual pages (POD)              -> perl-doc.jsonl (one document per page)
# With --prepare, `strata prepare` turns the files into shards with the GPT-2 tokenizer, holding out 0.5% of
# the documents (the last ones in sorted input order) for validation.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/corpus/large"
shards="$root/out/large"
do_prepare=0
while (($#)); do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --shards) shards="$2"; shift 2 ;;
    --prepare) do_prepare=1; shift ;;
    *) echo "build_large_corpus: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
for tool in apt-get dpkg-deb python3 gzip; do
  command -v "$tool" >/dev/null || { echo "build_large_corpus: '$tool' is needed" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
apt_dir="$work/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$work/debs" "$work/x"
. /etc/os-release
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian ${VERSION_CODENAME:-bookworm} main non-free" \
  > "$apt_dir/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null -o APT::Sandbox::User=root
          -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir" -o "Dir::Cache::Archives=$apt_dir/archives")
echo "build_large_corpus: fetching package lists (main + non-free)"
apt-get "${apt_opts[@]}" update -qq
pkgs=(doc-rfc-std doc-rfc-std-proposed doc-rfc-informational doc-rfc-experimental doc-rfc-fyi-bcp doc-rfc-misc
      doc-rfc-old-std doc-rfc-others dict-gcide python3.11-doc perl-doc)
echo "build_large_corpus: downloading ${pkgs[*]}"
(cd "$work/debs" && apt-get "${apt_opts[@]}" download -qq "${pkgs[@]}")
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/x"; done

mkdir -p "$out"
python3 - "$work/x" "$out" <<'PY'
import gzip, json, os, re, sys
from pathlib import Path

src, out = Path(sys.argv[1]), Path(sys.argv[2])

def read(p):
    data = p.read_bytes()
    if p.suffix == ".gz" or p.name.endswith(".dz"):
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")

def clean(text):
    text = text.replace("\r\n", "\n").replace("\f", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)          # trailing blanks
    text = re.sub(r"\n{3,}", "\n\n", text)           # page breaks and blank runs
    return text.strip() + "\n"

def write(name, docs):
    path = out / name
    tmp = path.with_suffix(".tmp")
    n = size = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for doc_name, text in docs:
            if len(text) < 200:
                continue
            f.write(json.dumps({"name": doc_name, "text": text}, ensure_ascii=False) + "\n")
            n += 1
            size += len(text.encode("utf-8"))
    os.replace(tmp, path)
    print(f"  {name:18s} {n:7d} documents {size / 1e6:9.1f} MB")

def rfcs():
    files = sorted(p for p in src.rglob("rfc*.txt*") if re.fullmatch(r"rfc\d+\.txt(\.gz)?", p.name))
    seen = set()
    for p in files:
        num = re.match(r"rfc(\d+)", p.name).group(1)
        if num in seen:
            continue
        seen.add(num)
        yield f"rfc{num}", clean(read(p))

def gcide():
    files = sorted(src.rglob("gcide.dict.dz"))
    for p in files:
        text = read(p)
        text = re.sub(r"<[^>]{0,200}>", "", text)       # entity markup
        text = clean(text)
        chunk, parts = [], 0
        for para in text.split("\n\n"):
            chunk.append(para)
            if sum(len(c) for c in chunk) > 64_000:
                yield f"gcide-{parts}", "\n\n".join(chunk) + "\n"
                chunk, parts = [], parts + 1
        if chunk:
            yield f"gcide-{parts}", "\n\n".join(chunk) + "\n"

def python_docs():
    for p in sorted(src.rglob("_sources/**/*.rst.txt")):
        yield "python/" + str(p).split("_sources/", 1)[1], clean(read(p))

def perl_docs():
    for p in sorted(src.rglob("*.pod")):
        yield "perl/" + p.name, clean(read(p))

print("build_large_corpus: writing JSON Lines")
write("rfc.jsonl", rfcs())
write("gcide.jsonl", gcide())
write("python-doc.jsonl", python_docs())
write("perl-doc.jsonl", perl_docs())
PY

if ((do_prepare)); then
  strata="$root/build/release/strata"
  [[ -x "$strata" ]] || { echo "build_large_corpus: build strata first (cmake --preset release && cmake --build --preset release)" >&2; exit 1; }
  "$strata" prepare --input "$out/*.jsonl" --val-fraction 0.005 --out "$shards" --overwrite
fi
echo "build_large_corpus: done -> $out"
