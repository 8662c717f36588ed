#include "generator/templates.h"

#include <fmt/format.h>

#include "commands/commands.h"

namespace spool::cli {

std::string_view Template(std::string_view name) {
  const auto& all = internal::EmbeddedTemplates();
  auto it = all.find(name);
  if (it == all.end()) throw CommandError(fmt::format("internal: no template {}", name));
  return it->second;
}

std::string Render(std::string_view text, const std::map<std::string, std::string>& vars) {
  std::string out;
  size_t line_start = 0;
  while (line_start < text.size()) {
    size_t line_end = text.find('\n', line_start);
    const bool has_newline = line_end != std::string_view::npos;
    if (!has_newline) line_end = text.size();
    const std::string_view line = text.substr(line_start, line_end - line_start);
    std::string rendered;
    bool only_empty_placeholder = false;
    size_t pos = 0;
    while (pos < line.size()) {
      const size_t open = line.find("{{", pos);
      if (open == std::string_view::npos) {
        rendered += line.substr(pos);
        break;
      }
      const size_t close = line.find("}}", open + 2);
      if (close == std::string_view::npos) {
        rendered += line.substr(pos);
        break;
      }
      rendered += line.substr(pos, open - pos);
      const std::string key(line.substr(open + 2, close - open - 2));
      auto it = vars.find(key);
      if (it == vars.end()) {
        throw CommandError(
            fmt::format("internal: template placeholder {{{{{}}}}} has no value", key));
      }
      rendered += it->second;
      only_empty_placeholder = it->second.empty() && open == 0 && close + 2 == line.size();
      pos = close + 2;
    }
    if (!only_empty_placeholder) {
      out += rendered;
      if (has_newline) out += '\n';
    }
    line_start = line_end + 1;
  }
  return out;
}

std::string RenderTemplate(std::string_view name, const std::map<std::string, std::string>& vars) {
  return Render(Template(name), vars);
}

}  // namespace spool::cli
