#include "core/exception.h"

#include <cxxabi.h>
#include <fmt/format.h>

#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <typeinfo>

namespace spool::internal {
namespace {

std::string Demangle(const char* name) {
  int status = 0;
  std::unique_ptr<char, decltype(&std::free)> out(
      abi::__cxa_demangle(name, nullptr, nullptr, &status), &std::free);
  return status == 0 && out ? std::string(out.get()) : std::string(name);
}

}  // namespace

CaughtException DescribeCurrentException() {
  CaughtException out;
  try {
    throw;
  } catch (const std::exception& e) {
    out.type = Demangle(typeid(e).name());
    out.message = fmt::format("{} thrown: {}", out.type, e.what());
  } catch (const std::string& text) {
    // throw std::string("...") and throw "..." carry their message as the value itself.
    out.type = "std::string";
    out.message = fmt::format("std::string thrown: {}", text);
  } catch (const char* text) {
    out.type = "const char*";
    out.message = fmt::format("const char* thrown: {}", text != nullptr ? text : "(null)");
  } catch (...) {
    // Anything else may be thrown (an int, a struct): its type is all there is to tell.
    const std::type_info* ti = abi::__cxa_current_exception_type();
    out.type = ti != nullptr ? Demangle(ti->name()) : "unknown";
    out.message = fmt::format("non-standard exception thrown: {}", out.type);
  }
  return out;
}

}  // namespace spool::internal
