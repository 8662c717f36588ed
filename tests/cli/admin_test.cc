// `spool jobs ...` and `spool queues ...` as a user runs them: parsed by CLI11 in-process against
// a temp SQLite database, checked through the public Client API.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <stdlib.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "cli_test_util.h"
#include "commands/commands.h"
#include "spool/client.h"

namespace spool::cli {
namespace {

using json = nlohmann::json;
using testing::ScopedCwd;
using testing::TempDir;
using testing::WriteText;
using namespace std::chrono_literals;

using testing::CliRun;
using testing::Spool;

json ParseOut(const CliRun& run) {
  json j = json::parse(run.out, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << "stdout is not JSON: " << run.out;
  return j;
}

class AdminTest : public ::testing::Test {
 protected:
  void SetUp() override {
    url_ = "sqlite://" + (dir_.path() / "app.db").string();
    ASSERT_TRUE(MigrateUp(url_).ok());
    auto c = Client::Open(url_, ClientOptions{});
    ASSERT_TRUE(c.has_value()) << c.error().message();
    client_ = std::move(*c);
  }

  // Adds a job, edits its row by hand (`set`: an UPDATE's SET list), and expects `jobs list` and
  // `jobs show` to print its JSON, with `shown` in both.
  void ExpectJsonOfEditedRowShows(const std::string& set, const std::string& shown) {
    const std::string sid = std::to_string(static_cast<int64_t>(Add({"k"})["id"]));
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir_.path() / "app.db").c_str(), &db), SQLITE_OK);
    const std::string edit = "UPDATE spool_job SET " + set + " WHERE id = " + sid;
    EXPECT_EQ(sqlite3_exec(db, edit.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
    for (const char* cmd : {"list", "show"}) {
      std::vector<std::string> args = {"jobs", cmd, "--json"};
      if (std::string_view(cmd) == "show") args.push_back(sid);
      CliRun r = Run(args);
      ASSERT_EQ(r.code, 0) << cmd << ": " << r.err;
      EXPECT_NE(r.out.find(shown), std::string::npos) << cmd << ": " << r.out.substr(0, 2000);
    }
  }

  // `spool <args...> --database-url <url_>`
  CliRun Run(std::vector<std::string> args) {
    args.push_back("--database-url");
    args.push_back(url_);
    return Spool(std::move(args));
  }

  // Adds a job through the CLI and returns its JSON object.
  json Add(std::vector<std::string> args) {
    args.insert(args.begin(), {"jobs", "add"});
    args.push_back("--json");
    CliRun r = Run(args);
    EXPECT_EQ(r.code, 0) << r.err;
    return ParseOut(r);
  }

  std::vector<JobRow> AllJobs() {
    JobListParams p;
    p.limit = 1000;
    auto jobs = client_->JobList(p);
    EXPECT_TRUE(jobs.has_value()) << jobs.error().message();
    return jobs ? *jobs : std::vector<JobRow>{};
  }

  TempDir dir_;
  std::string url_;
  std::unique_ptr<Client> client_;
};

void ExpectJobShape(const json& j) {
  ASSERT_TRUE(j.is_object()) << j.dump();
  for (const char* key : {"id", "attempt", "max_attempts", "priority"}) {
    EXPECT_TRUE(j.contains(key) && j[key].is_number_integer()) << key << " in " << j.dump();
  }
  for (const char* key : {"kind", "queue", "state", "scheduled_at", "created_at"}) {
    EXPECT_TRUE(j.contains(key) && j[key].is_string()) << key << " in " << j.dump();
  }
  for (const char* key : {"attempted_at", "finalized_at"}) {
    EXPECT_TRUE(j.contains(key) && (j[key].is_string() || j[key].is_null())) << key;
  }
  EXPECT_TRUE(j.contains("args") && j["args"].is_object()) << j.dump();
  EXPECT_TRUE(j.contains("metadata") && j["metadata"].is_object()) << j.dump();
  EXPECT_TRUE(j.contains("errors") && j["errors"].is_array()) << j.dump();
  EXPECT_TRUE(j.contains("tags") && j["tags"].is_array()) << j.dump();
}

TEST_F(AdminTest, AddListShowJson) {
  json added = Add({"send_email", "--args", R"({"to":"a@b.c","n":3})", "--queue", "mail",
                    "--priority", "2", "--max-attempts", "7"});
  ExpectJobShape(added);
  EXPECT_EQ(added["kind"], "send_email");
  EXPECT_EQ(added["queue"], "mail");
  EXPECT_EQ(added["state"], "available");
  EXPECT_EQ(added["priority"], 2);
  EXPECT_EQ(added["max_attempts"], 7);
  EXPECT_EQ(added["attempt"], 0);
  EXPECT_EQ(added["args"], json::parse(R"({"to":"a@b.c","n":3})"));
  EXPECT_EQ(added["errors"], json::array());
  ASSERT_TRUE(added.contains("duplicate"));
  EXPECT_EQ(added["duplicate"], false);
  const int64_t id = added["id"];

  auto stored = client_->JobGet(id);
  ASSERT_TRUE(stored.has_value());
  EXPECT_EQ(stored->kind, "send_email");
  EXPECT_EQ(stored->queue, "mail");
  EXPECT_EQ(json::parse(stored->args)["n"], 3);

  CliRun list = Run({"jobs", "list", "--json"});
  ASSERT_EQ(list.code, 0) << list.err;
  json arr = ParseOut(list);
  ASSERT_TRUE(arr.is_array());
  ASSERT_EQ(arr.size(), 1u);
  ExpectJobShape(arr[0]);
  EXPECT_EQ(arr[0]["id"], id);
  EXPECT_FALSE(arr[0].contains("duplicate"));

  CliRun show = Run({"jobs", "show", std::to_string(id), "--json"});
  ASSERT_EQ(show.code, 0) << show.err;
  json one = ParseOut(show);
  ExpectJobShape(one);
  EXPECT_EQ(one, arr[0]);
}

// A full page says how to get the next; a partial one says nothing.
TEST_F(AdminTest, ListSaysWhenThereMayBeMore) {
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(Run({"jobs", "add", "resize_image", "--args", "{}"}).code, 0);
  }
  CliRun page = Run({"jobs", "list", "--limit", "2"});
  ASSERT_EQ(page.code, 0) << page.err;
  EXPECT_NE(page.err.find("more: --after 2"), std::string::npos) << page.err;
  CliRun json_page = Run({"jobs", "list", "--limit", "2", "--json"});
  ASSERT_EQ(json_page.code, 0) << json_page.err;
  EXPECT_EQ(ParseOut(json_page).size(), 2u);
  EXPECT_NE(json_page.err.find("more: --after 2"), std::string::npos) << json_page.err;
  CliRun rest = Run({"jobs", "list", "--after", "2"});
  ASSERT_EQ(rest.code, 0) << rest.err;
  EXPECT_EQ(rest.err.find("more:"), std::string::npos) << rest.err;
  EXPECT_NE(rest.out.find("resize_image"), std::string::npos) << rest.out;
}

// queues list names the leader: none until a client runs, then that client.
TEST_F(AdminTest, QueuesListNamesTheLeader) {
  CliRun r = Run({"queues", "list"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("leader: none (no running client holds the lease)"), std::string::npos)
      << r.out;
  ClientOptions options;
  options.queues["default"] = {.max_workers = 1};
  options.client_id = "node-7";
  auto node = Client::Open(url_, std::move(options));
  ASSERT_TRUE(node) << node.error().ToString();
  ASSERT_TRUE((*node)->Start().ok());
  // Client::Start elects synchronously or within a leader_ttl / 3 round; wait on the lease.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!(*node)->IsLeader() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_TRUE((*node)->IsLeader());
  r = Run({"queues", "list"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("leader: node-7 (since "), std::string::npos) << r.out;
  ASSERT_TRUE((*node)->Stop(std::chrono::seconds(10)).ok());
  r = Run({"queues", "list"});
  EXPECT_NE(r.out.find("leader: none"), std::string::npos) << "a stopped leader resigns\n" << r.out;
}

TEST_F(AdminTest, HumanOutput) {
  CliRun add = Run({"jobs", "add", "resize_image", "--args", R"({"w":10})"});
  ASSERT_EQ(add.code, 0) << add.err;
  EXPECT_NE(add.out.find("inserted job 1"), std::string::npos) << add.out;
  ASSERT_EQ(Run({"jobs", "add", "a_much_longer_kind_name"}).code, 0);

  CliRun list = Run({"jobs", "list"});
  ASSERT_EQ(list.code, 0) << list.err;
  std::vector<std::string> lines;
  for (size_t pos = 0, nl; (nl = list.out.find('\n', pos)) != std::string::npos; pos = nl + 1) {
    lines.push_back(list.out.substr(pos, nl - pos));
  }
  ASSERT_EQ(lines.size(), 3u) << list.out;
  for (const auto& line : lines) EXPECT_NE(line.back(), ' ') << "trailing space: " << line;
  EXPECT_EQ(lines[0].rfind("ID", 0), 0u) << lines[0];
  // Aligned: the QUEUE column starts at the same offset on every line.
  const size_t col = lines[0].find("QUEUE");
  ASSERT_NE(col, std::string::npos);
  EXPECT_EQ(lines[1].substr(col, 7), "default") << list.out;
  EXPECT_EQ(lines[2].substr(col, 7), "default") << list.out;
  EXPECT_NE(lines[1].find("resize_image"), std::string::npos);

  CliRun show = Run({"jobs", "show", "1"});
  ASSERT_EQ(show.code, 0) << show.err;
  EXPECT_NE(show.out.find("resize_image"), std::string::npos) << show.out;
  EXPECT_NE(show.out.find("0 of 25"), std::string::npos) << show.out;
  EXPECT_NE(show.out.find(R"({"w":10})"), std::string::npos) << show.out;

  EXPECT_EQ(Run({"jobs", "list", "--state", "completed"}).out, "no jobs\n");
}

// A queue nobody has used is named (a typo there leaves the job waiting for ever); a known one is
// not.
TEST_F(AdminTest, AddToAQueueNobodyUsedSaysSo) {
  CliRun r = Run({"jobs", "add", "k", "--queue", "mial"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("note: no job or process had used queue mial before"), std::string::npos)
      << r.err;
  r = Run({"jobs", "add", "k", "--queue", "mial"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");
}

// A job added or retried into a paused queue waits until the queue is resumed: the command says so.
TEST_F(AdminTest, AddOrRetryIntoAPausedQueueSaysSo) {
  ASSERT_TRUE(client_->QueuePause("default").ok());
  CliRun add = Run({"jobs", "add", "k", "--json"});
  ASSERT_EQ(add.code, 0) << add.err;
  EXPECT_NE(add.err.find("note: queue default is paused (since "), std::string::npos) << add.err;
  EXPECT_NE(add.err.find("its jobs wait until spool queues resume default"), std::string::npos)
      << add.err;
  const int64_t id = ParseOut(add)["id"];
  ASSERT_TRUE(client_->JobCancel(id).has_value());
  CliRun retry = Run({"jobs", "retry", std::to_string(id)});
  ASSERT_EQ(retry.code, 0) << retry.err;
  EXPECT_NE(retry.err.find("note: queue default is paused"), std::string::npos) << retry.err;
  // Once resumed, or when nothing became available, no note.
  ASSERT_TRUE(client_->JobCancel(id).has_value());
  CliRun del = Run({"jobs", "delete", "--state", "cancelled"});
  ASSERT_EQ(del.code, 0) << del.err;
  EXPECT_EQ(del.err, "");
  ASSERT_TRUE(client_->QueueResume("default").ok());
  CliRun again = Run({"jobs", "add", "k"});
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_EQ(again.err, "");
}

TEST_F(AdminTest, ListFilters) {
  Add({"a", "--queue", "q1"});
  Add({"b", "--queue", "q2"});
  Add({"a", "--queue", "q2", "--schedule-in", "1h"});
  Add({"c"});
  auto ids = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"jobs", "list", "--json"});
    CliRun r = Run(args);
    EXPECT_EQ(r.code, 0) << r.err;
    std::vector<int64_t> out;
    for (const auto& j : ParseOut(r)) out.push_back(j["id"]);
    return out;
  };
  EXPECT_EQ(ids({}), (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(ids({"--kind", "a"}), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(ids({"--queue", "q2"}), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ids({"--state", "scheduled"}), (std::vector<int64_t>{3}));
  EXPECT_EQ(ids({"--state", "available,scheduled", "--queue", "q2"}), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ids({"--limit", "2"}), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(ids({"--limit", "2", "--after", "2"}), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(ids({"--newest-first"}), (std::vector<int64_t>{4, 3, 2, 1}));
  EXPECT_EQ(ids({"--newest-first", "--kind", "a"}), (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(ids({"--newest-first", "--before", "3"}), (std::vector<int64_t>{2, 1}));

  CliRun page = Run({"jobs", "list", "--newest-first", "--limit", "2"});
  ASSERT_EQ(page.code, 0) << page.err;
  EXPECT_NE(page.err.find("(the newest 2 matching jobs by id; more: --before 3, or --limit)"),
            std::string::npos)
      << page.err;
}

// A filter that matches nothing because no job has that kind or queue (a typo, most likely) says
// so on stderr; one that matches nothing in the states asked for stays quiet.
TEST_F(AdminTest, AnEmptyFilterNamesAKindOrQueueNoJobHas) {
  Add({"send_email", "--queue", "mail"});
  CliRun r = Run({"jobs", "list", "--kind", "SendEmail"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "no jobs\n");
  EXPECT_NE(r.err.find("note: no job of kind \"SendEmail\" is in the database"), std::string::npos)
      << r.err;
  r = Run({"jobs", "retry", "--state", "discarded", "--queue", "Mail"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "no jobs matched\n");
  EXPECT_NE(r.err.find("note: no job is in queue \"Mail\""), std::string::npos) << r.err;
  r = Run({"jobs", "retry", "--state", "discarded", "--kind", "send_email", "--queue", "mail"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "no jobs matched\n");
  EXPECT_EQ(r.err, "");
}

TEST_F(AdminTest, ScheduleIn) {
  const auto before = std::chrono::system_clock::now();
  json j = Add({"later", "--schedule-in", "1h30m"});
  EXPECT_EQ(j["state"], "scheduled");
  auto row = client_->JobGet(j["id"]);
  ASSERT_TRUE(row.has_value());
  const auto delay = row->scheduled_at - std::chrono::time_point_cast<Duration>(before);
  EXPECT_GE(delay, 90min);
  EXPECT_LT(delay, 91min);
  EXPECT_EQ(Add({"later", "--schedule-in", "30s"})["state"], "scheduled");
  j = Add({"later", "--schedule-in", "2d"});
  row = client_->JobGet(j["id"]);
  ASSERT_TRUE(row.has_value());
  EXPECT_GE(row->scheduled_at - std::chrono::time_point_cast<Duration>(before), 48h);
}

TEST_F(AdminTest, ScheduleAtTakesRfc3339WithItsZone) {
  json j = Add({"later", "--schedule-at", "2099-12-24T09:00:00Z"});
  EXPECT_EQ(j["state"], "scheduled");
  EXPECT_EQ(j["scheduled_at"], "2099-12-24T09:00:00.000000Z");
  j = Add({"later", "--schedule-at", "2099-12-24T10:30:00.25+01:30"});
  EXPECT_EQ(j["scheduled_at"], "2099-12-24T09:00:00.250000Z");
  j = Add({"later", "--schedule-at", "2099-02-28 23:00:00-02:00"});
  EXPECT_EQ(j["scheduled_at"], "2099-03-01T01:00:00.000000Z");
  // A time past is now: the job is available at once.
  j = Add({"now", "--schedule-at", "2001-01-01T00:00:00Z"});
  EXPECT_EQ(j["state"], "available");
  for (const char* bad : {"2099-12-24T09:00:00", "2099-12-24", "tomorrow", "2099-02-30T00:00:00Z",
                          "2099-13-01T00:00:00Z", "2099-12-24T25:00:00Z", "2099-12-24T09:00:00+1",
                          "2099-12-24T09:00:00Zjunk", "12099-01-01T00:00:00Z"}) {
    CliRun r = Run({"jobs", "add", "k", "--schedule-at", bad});
    EXPECT_EQ(r.code, kExitUsage) << bad;
    EXPECT_NE(r.err.find("is not a time: use RFC 3339 with its zone"), std::string::npos)
        << bad << ": " << r.err;
  }
  CliRun far = Run({"jobs", "add", "k", "--schedule-at", "2999-12-24T09:00:00Z"});
  EXPECT_EQ(far.code, kExitUsage);
  EXPECT_NE(far.err.find("more than 100 years ahead"), std::string::npos) << far.err;
  CliRun both =
      Run({"jobs", "add", "k", "--schedule-at", "2099-12-24T09:00:00Z", "--schedule-in", "1h"});
  EXPECT_EQ(both.code, kExitUsage) << both.err;
  EXPECT_EQ(AllJobs().size(), 4u);
}

TEST_F(AdminTest, TagsAndMetadata) {
  json j = Add({"k", "--tag", "billing, urgent", "--tag", "cli", "--metadata",
                R"({"source": "ops", "ticket": 42})"});
  EXPECT_EQ(j["tags"], json::array({"billing", "urgent", "cli"}));
  EXPECT_EQ(j["metadata"], json::parse(R"({"source": "ops", "ticket": 42})"));
  auto row = client_->JobGet(j["id"]);
  ASSERT_TRUE(row.has_value());
  EXPECT_EQ(row->tags, (std::vector<std::string>{"billing", "urgent", "cli"}));

  const auto refused = [&](std::vector<std::string> args, std::string_view says) {
    args.insert(args.begin(), {"jobs", "add", "k"});
    CliRun r = Run(args);
    EXPECT_EQ(r.code, kExitUsage) << fmt::format("{}", fmt::join(args, " "));
    EXPECT_NE(r.err.find(says), std::string::npos) << r.err;
  };
  refused({"--tag", "a, ,b"}, "--tag \"\": a tag is 1-255 characters");
  refused({"--tag", std::string(256, 't')}, "a tag is 1-255 characters");
  refused({"--metadata", "[1]"}, "--metadata must be a JSON object");
  refused({"--metadata", "{oops"}, "got text that is not JSON");
  EXPECT_EQ(AllJobs().size(), 1u);
}

TEST_F(AdminTest, UniqueByArgs) {
  json first = Add({"sync", "--args", R"({"account":1})", "--unique-by", "args"});
  EXPECT_EQ(first["duplicate"], false);
  json again = Add({"sync", "--args", R"({"account":1})", "--unique-by", "args"});
  EXPECT_EQ(again["duplicate"], true);
  EXPECT_EQ(again["id"], first["id"]);
  CliRun human = Run({"jobs", "add", "sync", "--args", R"({"account":1})", "--unique-by", "args"});
  ASSERT_EQ(human.code, 0) << human.err;
  EXPECT_NE(human.out.find(fmt::format("duplicate of job {}", first["id"].get<int64_t>())),
            std::string::npos)
      << human.out;
  json other = Add({"sync", "--args", R"({"account":2})", "--unique-by", "args"});
  EXPECT_EQ(other["duplicate"], false);
  EXPECT_NE(other["id"], first["id"]);
  EXPECT_EQ(AllJobs().size(), 2u);
}

TEST_F(AdminTest, BadArgsInsertNothing) {
  for (const char* bad : {"not json", "{\"a\":", "[1,2]", "42", "\"text\""}) {
    CliRun r = Run({"jobs", "add", "k", "--args", bad});
    EXPECT_EQ(r.code, kExitUsage) << bad;
    EXPECT_NE(r.err.find("--args"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("nothing was inserted"), std::string::npos) << r.err;
  }
  EXPECT_NE(Run({"jobs", "add", "k", "--args", "nope"}).err.find("not valid JSON"),
            std::string::npos);
  EXPECT_TRUE(AllJobs().empty());
}

TEST_F(AdminTest, BadUsageExitsTwo) {
  const std::vector<std::vector<std::string>> cases = {
      {"jobs", "add", "k", "--schedule-in", "soon"},
      {"jobs", "add", "k", "--schedule-in", "5x"},
      {"jobs", "add", "k", "--schedule-in", "m"},
      {"jobs", "add", "k", "--schedule-in", ""},
      {"jobs", "add", "k", "--schedule-in", "1m1m"},
      {"jobs", "add", "k", "--schedule-in", "30s1h"},
      {"jobs", "add", ""},
      {"jobs", "add", " ", "--any-kind"},
      {"jobs", "add", "k", "--priority", "9"},
      {"jobs", "add", "k", "--max-attempts", "0"},
      {"jobs", "add", "k", "--max-attempts", "99999999999"},
      {"jobs", "add", "k", "--schedule-in", "99999999d"},
      {"jobs", "add", "k", "--queue", "bad queue!"},
      {"jobs", "add", "k", "--unique-by", "colour"},
      {"jobs", "add"},
      {"jobs", "list", "--limit", "0"},
      {"jobs", "list", "--queue", "bad queue!"},
      {"jobs", "list", "--queue", ""},
      {"jobs", "list", "--kind", ""},
      {"jobs", "list", "--state", ""},
      {"jobs", "add", "evil\nkind", "--any-kind"},
      {"jobs", "list", "--state", " , "},
      {"jobs", "show", "abc"},
      {"jobs", "show"},
      {"jobs", "retry"},
      {"jobs", "cancel", "x"},
      {"jobs", "delete", "-3"},
      {"jobs", "frobnicate"},
      {"queues", "pause"},
      {"queues", "pause", "bad queue!"},
  };
  for (const auto& args : cases) {
    CliRun r = Run(args);
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    EXPECT_EQ(r.code, kExitUsage) << joined << "\n" << r.err;
  }
  EXPECT_TRUE(AllJobs().empty());
}

TEST_F(AdminTest, AMistypedSubcommandIsNamedWithTheChoices) {
  CliRun r = Spool({"jobs", "lsit"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_NE(r.err.find("unknown command \"lsit\" for spool jobs: use one of list, show, add"),
            std::string::npos)
      << r.err;
  r = Spool({"frob"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_NE(r.err.find("unknown command \"frob\" for spool: use one of migration"),
            std::string::npos)
      << r.err;
}

TEST_F(AdminTest, AnEmptyQueueIsNamedByItsFlag) {
  CliRun r = Run({"jobs", "add", "k", "--queue", ""});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_NE(r.err.find("--queue: queue name is empty"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("InsertOptions"), std::string::npos) << r.err;
}

TEST_F(AdminTest, BadNumbersAreRefusedInWords) {
  CliRun r = Run({"jobs", "add", "k", "--max-attempts", "0"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_NE(r.err.find("must be a whole number from 1 to 32767, got 0"), std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find("e+308"), std::string::npos) << r.err;
  // Past what the job row holds, though it fits a long long: refused by the flag, not by CLI11.
  r = Run({"jobs", "add", "k", "--max-attempts", "99999999999"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_NE(r.err.find("from 1 to 32767, got 99999999999"), std::string::npos) << r.err;
  // Hours whose microseconds overflow: once taken as now, or as 58 minutes.
  for (const char* large : {"99999999d", "3000000000h", "5124095577h", "999999999m2s"}) {
    r = Run({"jobs", "add", "k", "--schedule-in", large});
    EXPECT_EQ(r.code, kExitUsage) << large;
    EXPECT_NE(r.err.find("is too large"), std::string::npos) << large << ": " << r.err;
  }
  r = Run({"jobs", "show", "abc"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_NE(r.err.find("\"abc\" is not a whole number"), std::string::npos) << r.err;
  r = Run({"jobs", "list", "--after", "-1"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_NE(r.err.find("must be a whole number of 0 or more"), std::string::npos) << r.err;
  r = Run({"jobs", "show", "99999999999999999999"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_NE(r.err.find("\"99999999999999999999\" is too large"), std::string::npos) << r.err;
  r = Run({"jobs", "list", "--limit", "abc"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_NE(r.err.find("\"abc\" is not a whole number"), std::string::npos) << r.err;
  r = Run({"jobs", "list", "--limit", "0"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_NE(r.err.find("must be a whole number from 1 to 10000, got 0"), std::string::npos)
      << r.err;
  // A list of states written with spaces after its commas.
  r = Run({"jobs", "list", "--state", "completed, cancelled"});
  EXPECT_EQ(r.code, 0) << r.err;
}

TEST_F(AdminTest, CommandsOnAMistypedPathCreateNoDatabase) {
  namespace fs = std::filesystem;
  const fs::path typo = dir_.path() / "ap.db";
  const std::string typo_url = "sqlite://" + typo.string();
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"jobs", "list"},
                                             {"jobs", "show", "1"},
                                             {"jobs", "add", "k"},
                                             {"queues", "list"},
                                             {"migration", "status"},
                                             {"migration", "down"}}) {
    std::vector<std::string> with_url = args;
    with_url.insert(with_url.end(), {"--database-url", typo_url});
    CliRun r = Spool(with_url);
    EXPECT_EQ(r.code, kExitFailed) << args[0] << " " << args[1] << ": " << r.err;
    EXPECT_NE(r.err.find("no database at " + typo.string()), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("spool migration up"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(typo)) << args[0] << " " << args[1] << " created the file";
  }
  // A directory that does not exist: migration up would not create it, so it is named instead.
  const fs::path nowhere = dir_.path() / "no_such_dir" / "app.db";
  CliRun r = Spool({"jobs", "list", "--database-url", "sqlite://" + nowhere.string()});
  EXPECT_EQ(r.code, kExitFailed) << r.err;
  EXPECT_NE(r.err.find("its directory " + nowhere.parent_path().string() + " does not exist"),
            std::string::npos)
      << r.err;
}

TEST_F(AdminTest, DroppingSpoolsTablesWaitsForUnfinishedJobsOrForce) {
  const int64_t done = Add({"k"})["id"];
  Add({"k", "--schedule-in", "5m"});
  ASSERT_EQ(Run({"jobs", "cancel", std::to_string(done)}).code, 0);  // final: not counted
  CliRun r = Run({"migration", "down", "--target", "0"});
  EXPECT_EQ(r.code, kExitFailed);
  EXPECT_NE(r.err.find("hold 1 job(s) that have not finished (scheduled 1)"), std::string::npos)
      << r.err;
  EXPECT_EQ(AllJobs().size(), 2u);
  // Down to version 1 keeps the rows (versions 3 and 2 rebuild the table with them), and the
  // count by state reads version 1's state names as it read version 3's codes.
  r = Run({"migration", "down", "--target", "1"});
  ASSERT_EQ(r.code, 0) << r.err;
  r = Run({"migration", "down"});
  EXPECT_EQ(r.code, kExitFailed) << r.out;
  EXPECT_NE(r.err.find("(scheduled 1)"), std::string::npos) << r.err;
  r = Run({"migration", "down", "--force"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("version 0"), std::string::npos) << r.out;
}

TEST_F(AdminTest, PausingAQueueNoJobHasUsedSaysSo) {
  Add({"k", "--queue", "alpha"});
  CliRun r = Run({"queues", "pause", "alpah"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("paused queue alpah\nnote: no job or process has used queue alpah yet"),
            std::string::npos)
      << r.out;
  r = Run({"queues", "pause", "alpha"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "paused queue alpha\n");
}

TEST_F(AdminTest, BogusStateListsValidStates) {
  CliRun r = Run({"jobs", "list", "--state", "bogus"});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_NE(r.err.find("bogus"), std::string::npos) << r.err;
  for (JobState s : kAllJobStates) {
    EXPECT_NE(r.err.find(std::string(JobStateName(s))), std::string::npos) << r.err;
  }
}

TEST_F(AdminTest, MissingDatabaseUrlIsUsage) {
  TempDir cwd;
  ScopedCwd in(cwd.path());
  const char* saved = std::getenv("SPOOL_DATABASE_URL");
  const std::string saved_value = saved ? saved : "";
  unsetenv("SPOOL_DATABASE_URL");
  CliRun r = Spool({"jobs", "list"});
  if (saved) setenv("SPOOL_DATABASE_URL", saved_value.c_str(), 1);
  EXPECT_EQ(r.code, kExitUsage) << r.err;
  EXPECT_NE(r.err.find("--database-url"), std::string::npos) << r.err;
}

TEST_F(AdminTest, UnknownIdFailsWithOne) {
  CliRun show = Run({"jobs", "show", "42"});
  EXPECT_EQ(show.code, kExitFailed);
  EXPECT_NE(show.err.find("job 42 not found"), std::string::npos) << show.err;

  for (const char* op : {"retry", "cancel", "delete"}) {
    CliRun r = Run({"jobs", op, "42"});
    EXPECT_EQ(r.code, kExitFailed) << op;
    EXPECT_NE(r.err.find("job 42 not found"), std::string::npos) << op << ": " << r.err;
  }
}

TEST_F(AdminTest, OpsTryEveryIdThenFail) {
  const int64_t a = Add({"k"})["id"];
  const int64_t b = Add({"k"})["id"];
  // The unknown id comes first: the others are still processed, and the exit code is 1.
  CliRun cancel = Run({"jobs", "cancel", "999", std::to_string(a), std::to_string(b)});
  EXPECT_EQ(cancel.code, kExitFailed);
  EXPECT_NE(cancel.err.find("999"), std::string::npos) << cancel.err;
  EXPECT_NE(cancel.out.find(fmt::format("job {}: cancelled", a)), std::string::npos) << cancel.out;
  EXPECT_NE(cancel.out.find(fmt::format("job {}: cancelled", b)), std::string::npos) << cancel.out;
  EXPECT_EQ(client_->JobGet(a)->state, JobState::kCancelled);
  EXPECT_EQ(client_->JobGet(b)->state, JobState::kCancelled);

  CliRun retry = Run({"jobs", "retry", std::to_string(a), "999"});
  EXPECT_EQ(retry.code, kExitFailed);
  EXPECT_EQ(client_->JobGet(a)->state, JobState::kAvailable);

  CliRun del = Run({"jobs", "delete", "999", std::to_string(a)});
  EXPECT_EQ(del.code, kExitFailed);
  EXPECT_TRUE(client_->JobGet(a).error().IsNotFound());
  EXPECT_TRUE(client_->JobGet(b).has_value());
}

// The bulk form: every job in a state, narrowed by queue and kind. The jobs that do not match are
// left alone.
TEST_F(AdminTest, OpsByStateTouchOnlyTheMatchingJobs) {
  const int64_t a1 = Add({"a"})["id"];
  const int64_t a2 = Add({"a", "--queue", "q2"})["id"];
  const int64_t b1 = Add({"b"})["id"];
  const int64_t a3 = Add({"a"})["id"];
  CliRun cancel = Run({"jobs", "cancel", "--state", "available", "--kind", "a"});
  ASSERT_EQ(cancel.code, 0) << cancel.err;
  EXPECT_EQ(cancel.out, fmt::format("job {}: cancelled\njob {}: cancelled\njob {}: cancelled\n"
                                    "3 job(s) matched\n",
                                    a1, a2, a3));
  EXPECT_EQ(client_->JobGet(b1)->state, JobState::kAvailable);

  CliRun retry = Run({"jobs", "retry", "--state", "cancelled", "--queue", "q2"});
  ASSERT_EQ(retry.code, 0) << retry.err;
  EXPECT_EQ(retry.out, fmt::format("job {}: retried, now available\n1 job(s) matched\n", a2));
  EXPECT_EQ(client_->JobGet(a1)->state, JobState::kCancelled);
  EXPECT_EQ(client_->JobGet(a2)->state, JobState::kAvailable);

  CliRun none = Run({"jobs", "delete", "--state", "discarded"});
  ASSERT_EQ(none.code, 0) << none.err;
  EXPECT_EQ(none.out, "no jobs matched\n");

  CliRun del = Run({"jobs", "delete", "--state", "cancelled,available", "--kind", "a"});
  ASSERT_EQ(del.code, 0) << del.err;
  EXPECT_NE(del.out.find("3 job(s) matched"), std::string::npos) << del.out;
  ASSERT_EQ(AllJobs().size(), 1u);
  EXPECT_EQ(AllJobs()[0].id, b1);
}

// More jobs than one page of the walk: each is met once.
TEST_F(AdminTest, OpsByStateWalkEveryPage) {
  std::vector<InsertParams> many(2'345);
  for (auto& p : many) {
    p.kind = "k";
    p.options.queue = "bulk";
  }
  ASSERT_TRUE(client_->InsertMany(std::move(many)).has_value());
  Add({"k"});  // another queue's
  CliRun del = Run({"jobs", "delete", "--state", "available", "--queue", "bulk"});
  ASSERT_EQ(del.code, 0) << del.err;
  EXPECT_NE(del.out.find("\n2345 job(s) matched\n"), std::string::npos);
  ASSERT_EQ(AllJobs().size(), 1u);
  EXPECT_EQ(AllJobs()[0].queue, "default");
}

// The bulk form's mistakes are usage errors that touch no job.
TEST_F(AdminTest, OpsByStateRefuseWhatIsUnclear) {
  const int64_t id = Add({"a"})["id"];
  const auto refused = [&](std::vector<std::string> args, std::string_view says) {
    CliRun r = Run(args);
    EXPECT_EQ(r.code, kExitUsage) << fmt::format("{}", fmt::join(args, " "));
    EXPECT_NE(r.err.find(says), std::string::npos) << r.err;
  };
  refused({"jobs", "delete"}, "which jobs? give their ids");
  refused({"jobs", "delete", "--kind", "a"}, "--queue and --kind narrow a --state");
  refused({"jobs", "delete", std::to_string(id), "--state", "available"}, "not both");
  refused({"jobs", "retry", "--state", "running"}, "running jobs cannot be retried");
  refused({"jobs", "delete", "--state", "running,available"}, "running jobs cannot be deleted");
  refused({"jobs", "cancel", "--state", ""}, "--state: no state given");
  refused({"jobs", "cancel", "--state", "available", "--queue", ""}, "--queue");
  refused({"jobs", "cancel", "--state", "availabel"}, "availabel");
  EXPECT_EQ(client_->JobGet(id)->state, JobState::kAvailable);
}

TEST_F(AdminTest, CancelRetryDeleteHappyPath) {
  const int64_t id = Add({"k"})["id"];
  const std::string sid = std::to_string(id);

  CliRun cancel = Run({"jobs", "cancel", sid});
  ASSERT_EQ(cancel.code, 0) << cancel.err;
  EXPECT_EQ(cancel.out, fmt::format("job {}: cancelled\n", id));
  EXPECT_EQ(client_->JobGet(id)->state, JobState::kCancelled);

  CliRun again = Run({"jobs", "cancel", sid});
  EXPECT_EQ(again.code, 0) << again.err;
  EXPECT_EQ(again.out, fmt::format("job {}: already cancelled, left unchanged\n", id));

  CliRun retry = Run({"jobs", "retry", sid});
  ASSERT_EQ(retry.code, 0) << retry.err;
  EXPECT_EQ(retry.out, fmt::format("job {}: retried, now available\n", id));
  EXPECT_EQ(client_->JobGet(id)->state, JobState::kAvailable);

  CliRun del = Run({"jobs", "delete", sid});
  ASSERT_EQ(del.code, 0) << del.err;
  EXPECT_EQ(del.out, fmt::format("job {}: deleted (was available)\n", id));
  EXPECT_TRUE(client_->JobGet(id).error().IsNotFound());
}

// A row edited by hand so that it no longer reads: the error names it and says to delete it, and
// `spool jobs delete` does.
// The LAST ERROR column is cut short on a character's boundary: the listing stays valid UTF-8.
TEST_F(AdminTest, ALongErrorIsCutBetweenCharacters) {
  const int64_t id = Add({"k"})["id"];
  std::string error;
  for (int i = 0; i < 40; ++i) error += "\u043f";  // п, two bytes in UTF-8
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir_.path() / "app.db").c_str(), &db), SQLITE_OK);
  // After "xy", the cut at 57 bytes falls inside a character.
  const std::string set = "UPDATE spool_job SET errors = '[{\"at\":0,\"attempt\":1,\"error\":\"xy" +
                          error + "\",\"trace\":\"\"}]' WHERE id = " + std::to_string(id);
  EXPECT_EQ(sqlite3_exec(db, set.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  CliRun list = Run({"jobs", "list"});
  ASSERT_EQ(list.code, 0) << list.err;
  const size_t at = list.out.find("xy\u043f");
  ASSERT_NE(at, std::string::npos) << list.out;
  const size_t dots = list.out.find("...", at);
  ASSERT_NE(dots, std::string::npos) << list.out;
  // "xy" and 27 whole characters of 2 bytes before "...".
  EXPECT_EQ(dots - at, 56u) << list.out;
}

// A kind written by hand that is not UTF-8 shows as U+FFFD: the JSON listing still prints.
TEST_F(AdminTest, JsonOfTextThatIsNotUtf8StillPrints) {
  ExpectJsonOfEditedRowShows("kind = CAST(X'6bff' AS TEXT)", "k\uFFFD");
}

// Args nested past what an insert takes: `jobs add` refuses them before printing them, and a row
// holding them (written by another tool) lists with its args as a string; printing them as JSON
// recursed once per level and crashed the command.
TEST_F(AdminTest, ArgsNestedPastTheLimitAreRefusedAndListedAsText) {
  const std::string deep = "{\"a\":" + std::string(100'000, '[') + std::string(100'000, ']') + "}";
  CliRun add = Run({"jobs", "add", "k", "--args", deep});
  EXPECT_EQ(add.code, kExitUsage);
  EXPECT_NE(add.err.find("--args nest arrays and objects more than 512 levels deep"),
            std::string::npos)
      << add.err;
  add = Run({"jobs", "add", "k", "--metadata", deep});
  EXPECT_EQ(add.code, kExitUsage);
  EXPECT_NE(add.err.find("--metadata nest"), std::string::npos) << add.err;
  ExpectJsonOfEditedRowShows("args = '" + deep + "'", R"("args": "{\"a\":[[[[)");
}

TEST_F(AdminTest, DeleteRemovesARowThatCannotBeRead) {
  const int64_t id = Add({"k"})["id"];
  const int64_t other = Add({"k"})["id"];
  const std::string sid = std::to_string(id);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir_.path() / "app.db").c_str(), &db), SQLITE_OK);
  const std::string corrupt = "UPDATE spool_job SET tags = 'oops' WHERE id = " + sid;
  EXPECT_EQ(sqlite3_exec(db, corrupt.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);

  CliRun show = Run({"jobs", "show", sid});
  EXPECT_EQ(show.code, 1);
  EXPECT_NE(show.err.find("job " + sid + " cannot be read: column tags"), std::string::npos)
      << show.err;
  // The listing still lists the other job, and this one by its id.
  CliRun list = Run({"jobs", "list"});
  ASSERT_EQ(list.code, 0) << list.err;
  const size_t line = list.out.find("\n" + sid + " ");
  ASSERT_NE(line, std::string::npos) << list.out;
  EXPECT_EQ(list.out.find("(row cannot be read)"),
            list.out.find_first_not_of(' ', line + 1 + sid.size()))
      << list.out;
  EXPECT_NE(list.out.find("spool jobs show " + sid + " says why"), std::string::npos) << list.out;
  CliRun list_json = Run({"jobs", "list", "--json"});
  ASSERT_EQ(list_json.code, 0) << list_json.err;
  json listed = json::parse(list_json.out);
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0], (json{{"id", id}, {"unreadable", true}}));
  EXPECT_EQ(listed[1]["id"], other);

  CliRun del = Run({"jobs", "delete", sid});
  ASSERT_EQ(del.code, 0) << del.err;
  EXPECT_EQ(del.out, fmt::format("job {}: deleted (its row could not be read)\n", id));
  EXPECT_TRUE(client_->JobGet(id).error().IsNotFound());
  std::vector<JobRow> left = AllJobs();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].id, other);
}

TEST_F(AdminTest, QueuesListPauseResume) {
  Add({"k", "--queue", "alpha"});
  Add({"k", "--queue", "alpha"});
  Add({"k", "--queue", "beta", "--schedule-in", "5m"});

  auto queues = [&] {
    CliRun r = Run({"queues", "list", "--json"});
    EXPECT_EQ(r.code, 0) << r.err;
    return ParseOut(r);
  };
  json q = queues();
  ASSERT_TRUE(q.is_array());
  ASSERT_EQ(q.size(), 2u) << q.dump();
  EXPECT_EQ(q[0]["name"], "alpha");
  EXPECT_EQ(q[0]["paused"], false);
  EXPECT_EQ(q[0]["counts"]["available"], 2);
  EXPECT_EQ(q[0]["counts"]["scheduled"], 0);
  for (JobState s : kAllJobStates) {
    EXPECT_TRUE(q[0]["counts"].contains(std::string(JobStateName(s)))) << q.dump();
  }
  EXPECT_EQ(q[1]["name"], "beta");
  EXPECT_EQ(q[1]["counts"]["scheduled"], 1);

  CliRun pause = Run({"queues", "pause", "alpha"});
  ASSERT_EQ(pause.code, 0) << pause.err;
  EXPECT_EQ(pause.out, "paused queue alpha\n");
  q = queues();
  EXPECT_EQ(q[0]["paused"], true);
  EXPECT_TRUE(q[0]["paused_at"].is_string());
  EXPECT_EQ(q[1]["paused"], false);

  CliRun human = Run({"queues", "list"});
  ASSERT_EQ(human.code, 0) << human.err;
  EXPECT_NE(human.out.find("QUEUE"), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("AVAILABLE"), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("since "), std::string::npos) << human.out;

  CliRun paused_again = Run({"queues", "pause", "alpha"});
  ASSERT_EQ(paused_again.code, 0) << paused_again.err;
  EXPECT_EQ(paused_again.out, "queue alpha was already paused, left unchanged\n");
  EXPECT_EQ(queues()[0]["paused_at"], q[0]["paused_at"]) << "the pause keeps its time";

  CliRun resume = Run({"queues", "resume", "alpha"});
  ASSERT_EQ(resume.code, 0) << resume.err;
  EXPECT_EQ(resume.out, "resumed queue alpha\n");
  EXPECT_EQ(queues()[0]["paused"], false);
  CliRun resumed_again = Run({"queues", "resume", "alpha"});
  ASSERT_EQ(resumed_again.code, 0) << resumed_again.err;
  EXPECT_EQ(resumed_again.out, "queue alpha was already running, left unchanged\n");
  CliRun unknown = Run({"queues", "resume", "nosuch"});
  ASSERT_EQ(unknown.code, 0) << unknown.err;
  EXPECT_EQ(unknown.out,
            "queue nosuch is not paused: no job or process has used it yet (spool queues list "
            "shows the others); nothing changed\n");
}

// The demo on a database an app uses works only its own jobs, in queues of its own, and counts
// only those: it used to take the app's default-queue jobs (and they its).
TEST_F(AdminTest, DemoOnASharedDatabaseLeavesTheAppsJobsAlone) {
  const int64_t app_job = Add({"send_email", "--args", R"({"message":"hi"})"})["id"];
  CliRun r = Run({"demo", "--jobs", "100"});
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("inserted 100 jobs in one batch into queues spool_demo_"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("final counts: completed"), std::string::npos) << r.out;
  const JobRow mine = *client_->JobGet(app_job);
  EXPECT_EQ(mine.state, JobState::kAvailable);
  EXPECT_EQ(mine.attempt, 0);
}

// Retrying a completed job runs its work a second time: the line says so.
TEST_F(AdminTest, RetryOfACompletedJobSaysItRunsAgain) {
  const int64_t id = Add({"k"})["id"];
  const std::string sid = std::to_string(id);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir_.path() / "app.db").c_str(), &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 10'000);
  const std::string done =
      "UPDATE spool_job SET state = (SELECT state FROM spool_job_state WHERE name = "
      "'completed'), finalized_at = 1 WHERE id = " +
      sid;
  EXPECT_EQ(sqlite3_exec(db, done.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  CliRun retry = Run({"jobs", "retry", sid});
  ASSERT_EQ(retry.code, 0) << retry.err;
  EXPECT_EQ(retry.out,
            fmt::format(
                "job {}: retried, now available; it had completed, so its work runs again\n", id));
  EXPECT_EQ(client_->JobGet(id)->state, JobState::kAvailable);
}

// Collects job events from a working client so a test can wait for an outcome.
class EventLog {
 public:
  void Add(const Event& e) {
    std::lock_guard lock(mu_);
    events_.push_back(e);
    cv_.notify_all();
  }
  bool WaitFor(int64_t id, Event::Kind kind, std::chrono::seconds limit = 20s) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, limit, [&] {
      for (const auto& e : events_) {
        if (e.job.id == id && e.kind == kind) return true;
      }
      return false;
    });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Event> events_;
};

// Blocks until its job is cancelled (or a generous deadline passes), telling the test it started.
class BlockingWorker final : public WorkerBase {
 public:
  std::string_view Kind() const override { return "block"; }
  Outcome WorkJob(JobContext& ctx) override {
    {
      std::lock_guard lock(mu_);
      started_ = true;
    }
    cv_.notify_all();
    std::mutex m;
    std::condition_variable_any cv;
    std::unique_lock lock(m);
    cv.wait_for(lock, ctx.stop_token(), 30s, [] { return false; });
    return ctx.Cancelled() ? Outcome::Cancel("stopped by admin") : Outcome::Done();
  }
  bool WaitStarted() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, 20s, [&] { return started_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool started_ = false;
};

class FailingWorker final : public WorkerBase {
 public:
  std::string_view Kind() const override { return "fail"; }
  Outcome WorkJob(JobContext& ctx) override {
    return Outcome::Fail(fmt::format("boom {}\nsecond line", ctx.attempt()));
  }
  std::optional<Duration> NextRetry(const JobRow&) const override { return Duration::zero(); }
};

class WorkingAdminTest : public AdminTest {
 protected:
  void SetUp() override {
    AdminTest::SetUp();
    auto blocking = std::make_unique<BlockingWorker>();
    blocking_ = blocking.get();
    Workers workers;
    workers.Add(std::move(blocking));
    workers.Add<FailingWorker>();
    ClientOptions opts;
    opts.queues["work"] = QueueConfig{};
    opts.poll_interval = 20ms;
    opts.schedule_interval = 20ms;
    auto c = Client::Open(url_, std::move(opts), std::move(workers));
    ASSERT_TRUE(c.has_value()) << c.error().message();
    worker_client_ = std::move(*c);
    worker_client_->Subscribe([this](const Event& e) { events_.Add(e); });
    ASSERT_TRUE(worker_client_->Start().ok());
  }
  void TearDown() override {
    if (worker_client_) {
      EXPECT_TRUE(worker_client_->StopAndCancel().ok());
    }
  }

  EventLog events_;
  BlockingWorker* blocking_ = nullptr;
  std::unique_ptr<Client> worker_client_;
};

TEST_F(WorkingAdminTest, RunningJobCannotBeDeletedButCanBeCancelled) {
  const int64_t id = Add({"block", "--queue", "work"})["id"];
  ASSERT_TRUE(blocking_->WaitStarted());
  const std::string sid = std::to_string(id);

  CliRun del = Run({"jobs", "delete", sid});
  EXPECT_EQ(del.code, kExitFailed) << del.out;
  EXPECT_NE(del.err.find(sid), std::string::npos) << del.err;
  CliRun retry = Run({"jobs", "retry", sid});
  EXPECT_EQ(retry.code, kExitFailed) << retry.out;
  ASSERT_TRUE(client_->JobGet(id).has_value());
  EXPECT_EQ(client_->JobGet(id)->state, JobState::kRunning);

  CliRun cancel = Run({"jobs", "cancel", sid});
  ASSERT_EQ(cancel.code, 0) << cancel.err;
  EXPECT_NE(cancel.out.find(fmt::format("job {}: cancel", id)), std::string::npos) << cancel.out;
  ASSERT_TRUE(events_.WaitFor(id, Event::Kind::kJobCancelled));

  CliRun show = Run({"jobs", "show", sid, "--json"});
  ASSERT_EQ(show.code, 0) << show.err;
  json j = ParseOut(show);
  EXPECT_EQ(j["state"], "cancelled");
  EXPECT_TRUE(j["finalized_at"].is_string());
  EXPECT_TRUE(j["attempted_at"].is_string());

  CliRun del2 = Run({"jobs", "delete", sid});
  EXPECT_EQ(del2.code, 0) << del2.err;
}

TEST_F(WorkingAdminTest, ShowIncludesErrorHistory) {
  const int64_t id = Add({"fail", "--queue", "work", "--max-attempts", "2"})["id"];
  ASSERT_TRUE(events_.WaitFor(id, Event::Kind::kJobDiscarded));
  const std::string sid = std::to_string(id);

  CliRun show = Run({"jobs", "show", sid, "--json"});
  ASSERT_EQ(show.code, 0) << show.err;
  json j = ParseOut(show);
  ExpectJobShape(j);
  EXPECT_EQ(j["state"], "discarded");
  EXPECT_EQ(j["attempt"], 2);
  ASSERT_EQ(j["errors"].size(), 2u) << j.dump();
  for (int i = 0; i < 2; ++i) {
    const json& e = j["errors"][static_cast<size_t>(i)];
    EXPECT_EQ(e["attempt"], i + 1);
    EXPECT_EQ(e["error"], fmt::format("boom {}\nsecond line", i + 1));
    EXPECT_TRUE(e["at"].is_string());
  }

  CliRun human = Run({"jobs", "show", sid});
  ASSERT_EQ(human.code, 0) << human.err;
  // One line per attempt error, newlines escaped.
  EXPECT_NE(human.out.find("attempt 1"), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("boom 1\\nsecond line\n"), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("boom 2\\nsecond line\n"), std::string::npos) << human.out;

  CliRun list = Run({"jobs", "list", "--state", "discarded", "--json"});
  ASSERT_EQ(list.code, 0) << list.err;
  EXPECT_EQ(ParseOut(list)[0]["errors"].size(), 2u);

  // Retry keeps the attempts; the job runs (and fails) again.
  CliRun retry = Run({"jobs", "retry", sid});
  ASSERT_EQ(retry.code, 0) << retry.err;
  EXPECT_NE(retry.out.find(fmt::format("job {}: retried", id)), std::string::npos) << retry.out;
}

// `spool bench` as a user runs it, on a small scale: every job is worked once, the figures are
// there, and the bench's queue (paused while the client starts) is left resumed and completed.
TEST(BenchTest, WorksEveryJobOnceAndReportsItsFigures) {
  TempDir dir;
  const std::string url = "sqlite://" + (dir.path() / "bench.db").string();
  CliRun r = Spool({"bench", "--database-url", url, "--jobs", "3000", "--workers", "8",
                    "--insert-batch", "700", "--latency-jobs", "40", "--latency-rate", "2000",
                    "--job-timeout", "60", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  json j = ParseOut(r);
  EXPECT_EQ(j["driver"], "sqlite");
  EXPECT_EQ(j["jobs"], 3000);
  EXPECT_EQ(j["workers"], 8);
  EXPECT_EQ(j["insert_batch"], 700);  // five calls, the last one partial
  EXPECT_EQ(j["latency_jobs"], 40);
  EXPECT_EQ(j["job_timeout_s"], 60);
  EXPECT_EQ(j["claim_on_insert"], true);
  EXPECT_GE(j["latency_claimed_on_insert"].get<int>(), 0);
  EXPECT_LE(j["latency_claimed_on_insert"].get<int>(), 40);
  EXPECT_EQ(j["verified"], true);
  EXPECT_GT(j["insert_jobs_per_sec"].get<int64_t>(), 0);
  EXPECT_GT(j["work_jobs_per_sec"].get<int64_t>(), 0);
  EXPECT_GE(j["start_ms"].get<double>(), 0.0);
  const json& lat = j["latency_ms"];
  EXPECT_GT(lat["p50"].get<double>(), 0.0);
  EXPECT_LE(lat["p50"].get<double>(), lat["p95"].get<double>());
  EXPECT_LE(lat["p95"].get<double>(), lat["p99"].get<double>());

  auto c = Client::Open(url, ClientOptions{});
  ASSERT_TRUE(c.has_value()) << c.error().message();
  auto queues = (*c)->QueueList();
  ASSERT_TRUE(queues.has_value()) << queues.error().message();
  int bench_queues = 0;
  for (const QueueInfo& q : *queues) {
    if (q.name.rfind("spool_bench_", 0) != 0) continue;
    ++bench_queues;
    EXPECT_FALSE(q.paused_at.has_value()) << q.name << " was left paused";
    EXPECT_EQ(q.counts, (std::map<JobState, int64_t>{{JobState::kCompleted, 3040}}));
  }
  EXPECT_EQ(bench_queues, 1);
}

// With claims on insert off, every latency job is fetched: none comes back claimed.
TEST(BenchTest, NoClaimOnInsertLeavesEveryLatencyJobToAFetch) {
  TempDir dir;
  const std::string url = "sqlite://" + (dir.path() / "bench.db").string();
  CliRun r =
      Spool({"bench", "--database-url", url, "--jobs", "200", "--workers", "4", "--latency-jobs",
             "30", "--latency-rate", "2000", "--no-claim-on-insert", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  json j = ParseOut(r);
  EXPECT_EQ(j["claim_on_insert"], false);
  EXPECT_EQ(j["latency_claimed_on_insert"], 0);
  EXPECT_EQ(j["verified"], true);
}

TEST(BenchTest, InsideAnAppItNeedsAnExplicitDatabase) {
  TempDir app;
  WriteText(app.path() / ".spoolrc", "app=demo\ndb=sqlite\ndatabase_url=sqlite://app.db\n");
  ScopedCwd in(app.path());
  const char* saved = std::getenv("SPOOL_DATABASE_URL");
  const std::string saved_value = saved ? saved : "";
  unsetenv("SPOOL_DATABASE_URL");
  CliRun r = Spool({"bench", "--jobs", "10"});
  if (saved) setenv("SPOOL_DATABASE_URL", saved_value.c_str(), 1);
  EXPECT_EQ(r.code, kExitUsage) << r.err;
  EXPECT_NE(r.err.find("does not use the app's database"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(app.path() / "app.db"));
}

TEST(BenchTest, BadOptionsAreUsageErrorsAndTouchNoDatabase) {
  TempDir dir;
  const std::string url = "sqlite://" + (dir.path() / "bench.db").string();
  for (const std::vector<std::string>& bad : {std::vector<std::string>{"--jobs", "0"},
                                              {"--workers", "0"},
                                              {"--insert-batch", "0"},
                                              {"--latency-rate", "-5"},
                                              {"--job-timeout", "-1"}}) {
    std::vector<std::string> args = {"bench", "--database-url", url};
    args.insert(args.end(), bad.begin(), bad.end());
    CliRun r = Spool(args);
    EXPECT_EQ(r.code, 2) << bad[0] << ": " << r.err;
    EXPECT_NE(r.err.find(bad[0]), std::string::npos) << r.err;
  }
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "bench.db"));
}

}  // namespace
}  // namespace spool::cli
