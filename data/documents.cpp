#include "data/documents.h"

#include <nlohmann/json.hpp>

#include <string_view>

#include "engine/check.h"
#include "engine/fileio.h"

namespace strata::data {
namespace {

std::vector<Document> parse_jsonl(const std::string& path, const std::string& content) {
  std::vector<Document> docs;
  size_t pos = 0;
  size_t line_no = 0;
  while (pos < content.size()) {
    size_t end = content.find('\n', pos);
    if (end == std::string::npos) end = content.size();
    ++line_no;
    std::string_view line(content.data() + pos, end - pos);
    pos = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    STRATA_REQUIRE(!j.is_discarded(), "'", path, "' line ", line_no, ": not valid JSON");
    STRATA_REQUIRE(j.is_object(), "'", path, "' line ", line_no, ": expected a JSON object with a \"text\" field");
    auto it = j.find("text");
    STRATA_REQUIRE(it != j.end() && it->is_string(), "'", path, "' line ", line_no,
                   ": missing string field \"text\"");
    Document d;
    auto name = j.find("name");
    d.name = (name != j.end() && name->is_string()) ? name->get<std::string>() : cat(path, ":", line_no);
    d.text = it->get<std::string>();
    docs.push_back(std::move(d));
  }
  return docs;
}

}  // namespace

std::vector<Document> read_documents(const std::string& path) {
  std::string content = read_file(path);
  std::string_view logical = path;
  if (logical.ends_with(".xz")) logical.remove_suffix(3);
  if (logical.ends_with(".jsonl")) return parse_jsonl(path, content);
  std::vector<Document> docs;
  docs.push_back({path, std::move(content)});
  return docs;
}

std::vector<Document> read_documents(const std::vector<std::string>& paths) {
  std::vector<Document> all;
  for (const std::string& p : paths) {
    std::vector<Document> docs = read_documents(p);
    for (auto& d : docs) all.push_back(std::move(d));
  }
  return all;
}

}  // namespace strata::data
