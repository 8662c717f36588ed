#include "generator/names.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <iterator>

#include "commands/commands.h"

namespace spool::cli {
namespace {

constexpr std::string_view kInitialisms[] = {"id",   "url", "uri",  "http", "https", "api",  "sql",
                                             "json", "xml", "html", "css",  "js",    "uuid", "ip",
                                             "tcp",  "udp", "tls",  "ssl",  "cpu",   "db"};

constexpr std::string_view kKeywords[] = {"alignas",       "alignof",     "and",
                                          "and_eq",        "asm",         "auto",
                                          "bitand",        "bitor",       "bool",
                                          "break",         "case",        "catch",
                                          "char",          "char8_t",     "char16_t",
                                          "char32_t",      "class",       "compl",
                                          "concept",       "const",       "consteval",
                                          "constexpr",     "constinit",   "const_cast",
                                          "continue",      "co_await",    "co_return",
                                          "co_yield",      "decltype",    "default",
                                          "delete",        "do",          "double",
                                          "dynamic_cast",  "else",        "enum",
                                          "explicit",      "export",      "extern",
                                          "false",         "float",       "for",
                                          "friend",        "goto",        "if",
                                          "inline",        "int",         "long",
                                          "mutable",       "namespace",   "new",
                                          "noexcept",      "not",         "not_eq",
                                          "nullptr",       "operator",    "or",
                                          "or_eq",         "private",     "protected",
                                          "public",        "register",    "reinterpret_cast",
                                          "requires",      "return",      "short",
                                          "signed",        "sizeof",      "static",
                                          "static_assert", "static_cast", "struct",
                                          "switch",        "template",    "this",
                                          "thread_local",  "throw",       "true",
                                          "try",           "typedef",     "typeid",
                                          "typename",      "union",       "unsigned",
                                          "using",         "virtual",     "void",
                                          "volatile",      "wchar_t",     "while",
                                          "xor",           "xor_eq",      "final",
                                          "override",      "import",      "module"};

// Not keywords, but a job or type named after them is confusing enough to refuse.
constexpr std::string_view kReservedWords[] = {"main"};

// Target names CMake reserves: an app named after one configures but cannot build.
constexpr std::string_view kCMakeReservedTargets[] = {"all",
                                                      "clean",
                                                      "help",
                                                      "install",
                                                      "preinstall",
                                                      "edit_cache",
                                                      "test",
                                                      "package",
                                                      "package_source",
                                                      "rebuild_cache",
                                                      "list_install_components"};

bool IsLower(char c) { return c >= 'a' && c <= 'z'; }
bool IsUpper(char c) { return c >= 'A' && c <= 'Z'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// Names that only become files (migrations) need not avoid C++'s words.
bool BecomesCpp(std::string_view what) { return what == "job"; }

[[noreturn]] void Refuse(std::string_view what, std::string_view input, std::string_view why) {
  std::string rule(kJobNameRule);
  if (!BecomesCpp(what)) {
    rule = fmt::format(
        "a {} name is snake_case: a lowercase letter, then lowercase letters, digits and single "
        "underscores (e.g. add_users)",
        what);
  }
  throw CommandError(fmt::format("invalid {} name \"{}\": {}; {}", what, input, why, rule),
                     kExitUsage);
}

// SendEmail -> send_email, SyncAPI -> sync_api, HTMLParser -> html_parser.
std::string SnakeFromCamel(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (IsUpper(c)) {
      const bool prev_lower_or_digit = i > 0 && (IsLower(s[i - 1]) || IsDigit(s[i - 1]));
      const bool acronym_end = i > 0 && IsUpper(s[i - 1]) && i + 1 < s.size() && IsLower(s[i + 1]);
      if ((prev_lower_or_digit || acronym_end) && !out.empty() && out.back() != '_') {
        out += '_';
      }
      out += static_cast<char>(c - 'A' + 'a');
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

bool IsCppKeyword(std::string_view word) {
  // The contextual final/override/import/module are listed: a type named after them misleads.
  return std::find(std::begin(kKeywords), std::end(kKeywords), word) != std::end(kKeywords);
}

JobName NormalizeJobName(std::string_view input, std::string_view what) {
  if (input.empty()) Refuse(what, input, "it is empty");
  if (input.find('/') != std::string_view::npos || input.find('\\') != std::string_view::npos ||
      input.find("..") != std::string_view::npos) {
    Refuse(what, input, "a name, not a path, is expected");
  }
  if (input.front() == '-') Refuse(what, input, "it looks like a flag");
  for (const char c : input) {
    if (!IsLower(c) && !IsUpper(c) && !IsDigit(c) && c != '_' && c != '-') {
      // A byte of a multi-byte UTF-8 character cannot be printed alone.
      if (static_cast<unsigned char>(c) >= 0x80) Refuse(what, input, "only ASCII is allowed");
      Refuse(
          what, input,
          fmt::format("'{}' is not allowed", c == ' ' ? std::string("space") : std::string(1, c)));
    }
  }
  if (input.size() > 64) Refuse(what, input, "it is longer than 64 characters");
  std::string snake = SnakeFromCamel(input);
  std::replace(snake.begin(), snake.end(), '-', '_');
  // The rules below are about the snake_case name; when it differs from what was typed
  // (send--email), the reason names it.
  const std::string as_snake =
      snake == input ? std::string() : fmt::format(" (as snake_case: {})", snake);
  if (IsDigit(snake.front())) Refuse(what, input, "it starts with a digit");
  if (snake.front() == '_') Refuse(what, input, "it starts with an underscore" + as_snake);
  if (snake.back() == '_') Refuse(what, input, "it ends with an underscore" + as_snake);
  if (snake.find("__") != std::string::npos) {
    Refuse(what, input,
           (BecomesCpp(what) ? "double underscores are reserved in C++"
                             : "it has a double underscore") +
               as_snake);
  }
  if (BecomesCpp(what)) {
    if (IsCppKeyword(snake)) Refuse(what, input, fmt::format("\"{}\" is a C++ keyword", snake));
    if (std::find(std::begin(kReservedWords), std::end(kReservedWords), snake) !=
        std::end(kReservedWords)) {
      Refuse(what, input, fmt::format("\"{}\" is reserved in C++", snake));
    }
  }
  if (what == "job" && snake == "registry")
    Refuse(what, input, "\"registry\" is spool's own jobs/registry file");
  JobName name{snake, {}};
  if (snake != input) {
    name.note =
        fmt::format("{} name \"{}\" was converted to \"{}\" (snake_case)", what, input, snake);
  }
  return name;
}

std::string CamelCase(std::string_view snake) {
  std::string out;
  size_t start = 0;
  while (start <= snake.size()) {
    size_t end = snake.find('_', start);
    if (end == std::string_view::npos) end = snake.size();
    const std::string_view part = snake.substr(start, end - start);
    if (std::find(std::begin(kInitialisms), std::end(kInitialisms), part) !=
        std::end(kInitialisms)) {
      for (const char c : part)
        out += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    } else if (!part.empty()) {
      out += static_cast<char>(std::toupper(static_cast<unsigned char>(part.front())));
      out += part.substr(1);
    }
    start = end + 1;
  }
  return out;
}

void ValidateAppName(std::string_view name, int exit_code) {
  constexpr std::string_view kRule =
      "an app name is a lowercase letter, then lowercase letters, digits, '_' or '-', at most 64 "
      "characters (e.g. my_app)";
  bool ok = !name.empty() && name.size() <= 64 && IsLower(name.front());
  for (const char c : name) ok = ok && (IsLower(c) || IsDigit(c) || c == '_' || c == '-');
  if (!ok) throw CommandError(fmt::format("invalid app name \"{}\": {}", name, kRule), exit_code);
  if (std::find(std::begin(kCMakeReservedTargets), std::end(kCMakeReservedTargets), name) !=
      std::end(kCMakeReservedTargets)) {
    throw CommandError(
        fmt::format(
            "invalid app name \"{}\": CMake reserves the target name \"{}\", so the app could not "
            "be built; choose another (e.g. {}_app)",
            name, name, name),
        exit_code);
  }
}

}  // namespace spool::cli
