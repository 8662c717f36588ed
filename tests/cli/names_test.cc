#include "generator/names.h"

#include <gtest/gtest.h>

#include <cctype>
#include <string>

#include "commands/commands.h"

namespace spool::cli {
namespace {

struct NameCase {
  const char* input;
  const char* snake;  // nullptr: refused
  bool noted;         // a conversion note is printed
};

class JobNameRulesTest : public ::testing::TestWithParam<NameCase> {};

TEST_P(JobNameRulesTest, NormalizesOrRefusesWithTheRule) {
  const NameCase& c = GetParam();
  if (c.snake == nullptr) {
    try {
      NormalizeJobName(c.input);
      FAIL() << "\"" << c.input << "\" was accepted";
    } catch (const CommandError& e) {
      EXPECT_EQ(e.exit_code, kExitUsage);  // a bad argument
      EXPECT_NE(std::string(e.what()).find(kJobNameRule), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(std::string("\"") + c.input + "\""), std::string::npos)
          << e.what();
    }
    return;
  }
  const JobName name = NormalizeJobName(c.input);
  EXPECT_EQ(name.snake, c.snake);
  EXPECT_EQ(!name.note.empty(), c.noted) << name.note;
  if (c.noted) {
    EXPECT_NE(name.note.find(c.snake), std::string::npos) << name.note;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Table, JobNameRulesTest,
    ::testing::Values(NameCase{"send_email", "send_email", false},
                      NameCase{"sync_api", "sync_api", false}, NameCase{"job2", "job2", false},
                      NameCase{"SendEmail", "send_email", true},
                      NameCase{"send-email", "send_email", true},
                      NameCase{"SyncAPI", "sync_api", true}, NameCase{"UserID", "user_id", true},
                      NameCase{"HTMLParser", "html_parser", true},
                      NameCase{"9lives", nullptr, false}, NameCase{"class", nullptr, false},
                      NameCase{"co_await", nullptr, false}, NameCase{"and", nullptr, false},
                      NameCase{"Class", nullptr, false}, NameCase{"../x", nullptr, false},
                      NameCase{"jobs/x", nullptr, false}, NameCase{"a b", nullptr, false},
                      NameCase{"", nullptr, false}, NameCase{"-x", nullptr, false},
                      NameCase{"send__email", nullptr, false}, NameCase{"_send", nullptr, false},
                      NameCase{"send_", nullptr, false}, NameCase{"send.email", nullptr, false},
                      NameCase{"registry", nullptr, false}, NameCase{"main", nullptr, false}),
    // Stable, readable names: the index plus the input's identifier characters. Without this
    // GoogleTest names the cases by the struct's raw bytes, pointers included.
    [](const ::testing::TestParamInfo<NameCase>& param_info) {
      std::string name = std::to_string(param_info.index) + "_";
      for (const char* p = param_info.param.input; *p != '\0'; ++p) {
        if (std::isalnum(static_cast<unsigned char>(*p)) != 0) name += *p;
      }
      return name;
    });

TEST(CamelCaseTest, KeepsInitialismsUpperCase) {
  EXPECT_EQ(CamelCase("send_email"), "SendEmail");
  EXPECT_EQ(CamelCase("sync_api"), "SyncAPI");
  EXPECT_EQ(CamelCase("user_id"), "UserID");
  EXPECT_EQ(CamelCase("html_url"), "HTMLURL");
  EXPECT_EQ(CamelCase("db_backup"), "DBBackup");
  EXPECT_EQ(CamelCase("fetch_json_via_https"), "FetchJSONViaHTTPS");
  EXPECT_EQ(CamelCase("v2_import"), "V2Import");
  EXPECT_EQ(CamelCase("uuid"), "UUID");
  EXPECT_EQ(CamelCase("identity"), "Identity");  // only whole words are initialisms
}

TEST(CamelCaseTest, EveryInitialismOfTheList) {
  for (const char* word :
       {"id",  "url", "uri",  "http", "https", "api", "sql", "json", "xml", "html",
        "css", "js",  "uuid", "ip",   "tcp",   "udp", "tls", "ssl",  "cpu", "db"}) {
    std::string upper = word;
    for (char& ch : upper) ch = static_cast<char>(ch - 'a' + 'A');
    EXPECT_EQ(CamelCase(std::string("x_") + word), "X" + upper) << word;
  }
}

TEST(AppNameTest, AcceptsKebabAndSnakeRefusesOthers) {
  EXPECT_NO_THROW(ValidateAppName("shop"));
  EXPECT_NO_THROW(ValidateAppName("my-shop_2"));
  for (const char* bad : {"", "Shop", "9shop", "../shop", "a b", "-x", "shop/x"}) {
    EXPECT_THROW(ValidateAppName(bad), CommandError) << bad;
  }
  // Names CMake reserves for its own targets: the app would configure but not build.
  for (const char* reserved : {"all", "test", "install", "help", "clean", "package"}) {
    try {
      ValidateAppName(reserved);
      ADD_FAILURE() << reserved << " was accepted";
    } catch (const CommandError& e) {
      EXPECT_NE(std::string(e.what()).find("CMake reserves"), std::string::npos) << e.what();
    }
  }
  EXPECT_NO_THROW(ValidateAppName("tests"));
}

}  // namespace
}  // namespace spool::cli
