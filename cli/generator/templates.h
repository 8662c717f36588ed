#pragma once

#include <map>
#include <string>
#include <string_view>

namespace spool::cli {

// The text of cli/templates/`name` (e.g. "new/main.cpp.tmpl"), embedded at build time.
// Throws CommandError for an unknown name (a bug in the generator).
std::string_view Template(std::string_view name);

// Replaces every {{key}} in `text` with vars[key]. A line holding only a placeholder whose value
// is empty is dropped. Throws CommandError on a placeholder without a value.
std::string Render(std::string_view text, const std::map<std::string, std::string>& vars);

// Template(name) rendered with `vars`.
std::string RenderTemplate(std::string_view name, const std::map<std::string, std::string>& vars);

namespace internal {
// Defined in the build's embedded_templates.cc.
const std::map<std::string_view, std::string_view>& EmbeddedTemplates();
}  // namespace internal

}  // namespace spool::cli
