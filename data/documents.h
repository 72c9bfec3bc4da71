// data/documents.h: reading text documents from the files a user points `strata prepare` at.
//
// Formats, chosen by file name (a trailing ".xz" is decompressed first):
//   *.jsonl  JSON Lines: one JSON object per line with a string field "text" (and optionally "name");
//            blank lines are skipped. This is how the embedded corpora are stored.
//   other    the whole file is one document (plain text, any bytes).
// Errors are one line naming the file (and line for JSON Lines).
#pragma once

#include <string>
#include <vector>

namespace strata::data {

// The formats above in one line, for the help of every command that reads documents.
inline constexpr const char* kDocumentFormatsHelp =
    "files, folders or globs; *.jsonl(.xz) = one {\"text\": ...} per line, other files = one document each";

struct Document {
  std::string name;  // "<file>" or "<file>:<line>" unless the JSON gives a name
  std::string text;
};

// Documents of one file, in file order.
std::vector<Document> read_documents(const std::string& path);
// Documents of several files, in the given order.
std::vector<Document> read_documents(const std::vector<std::string>& paths);

}  // namespace strata::data
