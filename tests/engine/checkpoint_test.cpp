// engine/checkpoint and models/model_config_json: bit-exact round trips, pruning, resolution of run folders,
// detection of missing / truncated / corrupt files and of a different model, and saves that fail cleanly.
#include "engine/checkpoint.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>

#include "engine/check.h"
#include "engine/fileio.h"
#include "models/model_config_json.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using strata::test::expect_one_line_error;

namespace {

strata::models::ModelConfig small_llama(int layers = 2, int width = 16) {
  strata::models::ModelConfig c;
  c.name = "custom";
  c.family = strata::models::Family::kLlama;
  c.n_layer = layers;
  c.d_model = width;
  c.n_head = 2;
  c.n_kv_head = 1;
  c.d_ff = 24;
  c.vocab_size = 64;
  c.max_seq_len = 16;
  return c;
}

strata::models::ModelConfig small_gpt2() {
  strata::models::ModelConfig c = small_llama();
  c.family = strata::models::Family::kGpt2;
  c.n_kv_head = c.n_head;
  c.d_ff = 4 * c.d_model;
  return c;
}

// Seeded values in every tensor element (never zeros), with a few special values that must survive bit for
// bit: -0.0, a NaN with a payload, infinity, a subnormal.
void fill(strata::ParamBuffer& b, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (const strata::ParamEntry& e : b.layout().entries()) {
    float* p = b.data() + e.offset;
    for (int64_t i = 0; i < e.numel(); ++i) p[i] = nd(rng);
  }
  float* p = b.data();
  p[0] = -0.0f;
  p[1] = std::bit_cast<float>(0x7FC01234u);
  p[2] = std::numeric_limits<float>::infinity();
  p[3] = std::numeric_limits<float>::denorm_min();
}

bool bit_equal(const strata::ParamBuffer& a, const strata::ParamBuffer& b) {
  return a.numel() == b.numel() && std::memcmp(a.data(), b.data(), sizeof(float) * a.numel()) == 0;
}

std::string slurp(const std::string& p) {
  return strata::read_file(p);
}
void spit(const std::string& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

class CheckpointTest : public strata::test::TempDirTest {
 protected:
  CheckpointTest() : layout_(small_llama()), params_(layout_), opt_(layout_, strata::AdamWConfig{}) {}
  void SetUp() override {
    TempDirTest::SetUp();
    run_ = path("run");
    fill(params_, 1);
    fill(opt_.m(), 2);
    fill(opt_.v(), 3);
    opt_.set_t(7);
  }
  std::string save(long step, int keep_last = 0) {
    return strata::save_checkpoint(run_, step, params_, &opt_, {{"tokens", step * 1000}, {"opt_t", 7}},
                                   keep_last);
  }
  // Every entry of the run folder, sorted (dot-folders included).
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(run_)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  strata::ParamLayout layout_;
  strata::ParamBuffer params_;
  strata::AdamW opt_;
  std::string run_;
};

TEST_F(CheckpointTest, RoundTripIsBitExact) {
  const std::string dir = save(100);
  EXPECT_EQ(dir, run_ + "/ckpt-00000100");
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt-00000100"});  // no temporary left behind
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"model.safetensors", "optimizer.safetensors", "state.json"}));

  strata::ParamBuffer p2(layout_);
  strata::AdamW o2(layout_, strata::AdamWConfig{});
  ASSERT_FALSE(bit_equal(p2, params_));
  strata::load_checkpoint_params(dir, p2);
  strata::load_checkpoint_optimizer(dir, o2);
  EXPECT_TRUE(bit_equal(p2, params_));
  EXPECT_TRUE(bit_equal(o2.m(), opt_.m()));
  EXPECT_TRUE(bit_equal(o2.v(), opt_.v()));

  const strata::CheckpointInfo info = strata::read_checkpoint_info(dir);
  EXPECT_EQ(info.dir, dir);
  EXPECT_EQ(info.step, 100);
  EXPECT_EQ(strata::models::model_config_to_json(info.model),
            strata::models::model_config_to_json(small_llama()));
  EXPECT_EQ(info.trainer, (nlohmann::json{{"tokens", 100000}, {"opt_t", 7}}));
  EXPECT_TRUE(info.has_optimizer());
  EXPECT_EQ(info.files.at("model.safetensors").bytes, fs::file_size(dir + "/model.safetensors"));

  // The files are what the format promises to other readers.
  const nlohmann::json state = nlohmann::json::parse(slurp(dir + "/state.json"));
  EXPECT_EQ(state["format_version"], 1);
  EXPECT_EQ(state["files"]["optimizer.safetensors"]["crc64"].get<std::string>().size(), 16u);
  const auto model = strata::SafetensorsFile::open(dir + "/model.safetensors");
  EXPECT_EQ(model.metadata().at("format"), "strata");
  EXPECT_EQ(model.metadata().at("family"), "llama");
  EXPECT_EQ(
      strata::models::model_config_from_json(nlohmann::json::parse(model.metadata().at("config"))).n_layer,
      2);
  const strata::ParamEntry* qkv = layout_.find("attn_qkv");
  ASSERT_NE(qkv, nullptr);
  EXPECT_EQ(model.get("attn_qkv").shape, qkv->stored_shape());
  EXPECT_EQ(model.get("attn_qkv").shape.front(), 2);  // the layer axis first
  const auto optim = strata::SafetensorsFile::open(dir + "/optimizer.safetensors");
  EXPECT_EQ(optim.tensors().size(), 2 * layout_.entries().size());
  EXPECT_EQ(optim.get("v.attn_qkv").shape, qkv->stored_shape());
}

TEST_F(CheckpointTest, Gpt2RoundTrip) {
  const strata::ParamLayout layout(small_gpt2());
  strata::ParamBuffer p(layout), p2(layout);
  fill(p, 9);
  const std::string dir = strata::save_checkpoint(run_, 0, p, nullptr, nullptr, 0);
  EXPECT_EQ(dir, run_ + "/ckpt-00000000");
  strata::load_checkpoint_params(dir, p2);
  EXPECT_TRUE(bit_equal(p, p2));
  const strata::CheckpointInfo info = strata::read_checkpoint_info(dir);
  EXPECT_FALSE(info.has_optimizer());
  EXPECT_EQ(info.model.family, strata::models::Family::kGpt2);
  EXPECT_TRUE(info.trainer.is_object() && info.trainer.empty());
  EXPECT_FALSE(fs::exists(dir + "/optimizer.safetensors"));
  strata::AdamW o(layout, strata::AdamWConfig{});
  expect_one_line_error([&] { strata::load_checkpoint_optimizer(dir, o); },
                        {dir, "optimizer.safetensors", "without an optimizer"});
}

TEST_F(CheckpointTest, KeepLastPrunesOldestButNeverTheNewOne) {
  for (long s = 1; s <= 5; ++s) save(s, 2);
  EXPECT_EQ(listing(), (std::vector<std::string>{"ckpt-00000004", "ckpt-00000005"}));
  save(2,
       2);  // an older step (e.g. a re-run from an earlier checkpoint) is kept although it is not the newest
  EXPECT_EQ(listing(), (std::vector<std::string>{"ckpt-00000002", "ckpt-00000004", "ckpt-00000005"}));
  save(6, 1);
  EXPECT_EQ(listing(), (std::vector<std::string>{"ckpt-00000006"}));
  for (long s = 7; s <= 9; ++s) save(s, 0);  // keep all
  EXPECT_EQ(listing().size(), 4u);
  save(10, -1);
  EXPECT_EQ(listing().size(), 5u);
}

TEST_F(CheckpointTest, SavingTheSameStepTwiceReplacesIt) {
  save(3);
  fill(params_, 42);
  const std::string dir = save(3);
  strata::ParamBuffer p2(layout_);
  strata::load_checkpoint_params(dir, p2);
  EXPECT_TRUE(bit_equal(p2, params_));
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt-00000003"});
}

TEST_F(CheckpointTest, ResolvePicksNewestCompleteCheckpoint) {
  save(2);
  save(10);
  save(9);
  // Leftovers a crash can leave: a temporary folder with a higher step, an incomplete ckpt folder, a stray
  // file.
  fs::copy(run_ + "/ckpt-00000010", run_ + "/.ckpt-00000099.tmp-12345");
  fs::create_directory(run_ + "/ckpt-00000050");
  spit(run_ + "/ckpt-00000060", "not a folder");
  fs::copy(run_ + "/ckpt-00000010", run_ + "/ckpt-0000007x");
  EXPECT_EQ(strata::resolve_checkpoint(run_), run_ + "/ckpt-00000010");
  EXPECT_EQ(strata::resolve_checkpoint(run_ + "/ckpt-00000002"), run_ + "/ckpt-00000002");
  const auto all = strata::list_checkpoints(run_);
  EXPECT_EQ(all.size(), 3u);
  EXPECT_EQ(all.begin()->first, 2);
  // Pruning ignores the leftovers too.
  save(11, 1);
  EXPECT_EQ(strata::list_checkpoints(run_).size(), 1u);
  EXPECT_TRUE(fs::exists(run_ + "/.ckpt-00000099.tmp-12345"));

  expect_one_line_error([&] { strata::resolve_checkpoint(path("nope")); }, {path("nope"), "no such file"});
  spit(path("file"), "x");
  expect_one_line_error([&] { strata::resolve_checkpoint(path("file")); }, {path("file"), "not a folder"});
  fs::create_directory(path("empty"));
  expect_one_line_error([&] { strata::resolve_checkpoint(path("empty")); },
                        {path("empty"), "no complete checkpoint"});
  expect_one_line_error([&] { strata::read_checkpoint_info(path("empty")); },
                        {path("empty"), "no state.json"});
}

TEST_F(CheckpointTest, DamagedFilesAreDetected) {
  const std::string dir = save(1);
  const std::string model = dir + "/model.safetensors", optim = dir + "/optimizer.safetensors";
  const std::string good_model = slurp(model), good_optim = slurp(optim),
                    good_state = slurp(dir + "/state.json");
  strata::ParamBuffer p2(layout_);
  strata::AdamW o2(layout_, strata::AdamWConfig{});
  const auto load_params = [&] { strata::load_checkpoint_params(dir, p2); };

  fs::remove(model);
  expect_one_line_error(load_params, {model, "missing"});

  spit(model, good_model.substr(0, good_model.size() - 5));
  expect_one_line_error(load_params, {model, "truncated"});

  // One flipped bit in the data section, and one in the header: both caught by the checksum.
  for (size_t pos : {good_model.size() - 100, size_t{20}}) {
    std::string bad = good_model;
    bad[pos] = static_cast<char>(bad[pos] ^ 0x10);
    spit(model, bad);
    expect_one_line_error(load_params, {model, "CRC-64", "corrupt"});
  }
  spit(model, good_model);

  std::string bad = good_optim;
  bad[bad.size() / 2] = static_cast<char>(bad[bad.size() / 2] ^ 0x01);
  spit(optim, bad);
  expect_one_line_error([&] { strata::load_checkpoint_optimizer(dir, o2); }, {optim, "CRC-64"});
  spit(optim, good_optim);

  EXPECT_TRUE(bit_equal(p2, strata::ParamBuffer(layout_))) << "a failed load wrote into the buffer";

  const std::string state = dir + "/state.json";
  spit(state, "{\"format_version\": 1,\n \"step\": ");
  expect_one_line_error(load_params, {state, "not valid JSON"});
  nlohmann::json j = nlohmann::json::parse(good_state);
  j["format_version"] = 2;
  spit(state, j.dump());
  expect_one_line_error(load_params, {state, "format_version 2"});
  j = nlohmann::json::parse(good_state);
  j["model"].erase("d_ff");
  spit(state, j.dump());
  expect_one_line_error(load_params, {state, "'d_ff' is missing"});
  j = nlohmann::json::parse(good_state);
  j["files"]["model.safetensors"]["crc64"] = "xyz";
  spit(state, j.dump());
  expect_one_line_error(load_params, {state, "crc64"});
  j = nlohmann::json::parse(good_state);
  j.erase("trainer");
  spit(state, j.dump());
  expect_one_line_error(load_params, {state, "'trainer' is missing"});

  spit(state, good_state);
  strata::load_checkpoint_params(dir, p2);  // all restored: loads again
  EXPECT_TRUE(bit_equal(p2, params_));
}

TEST_F(CheckpointTest, CheckpointOfADifferentModelNamesTheTensorAndShapes) {
  const std::string dir = save(1);
  {
    const strata::ParamLayout deeper(small_llama(3));
    strata::ParamBuffer p(deeper);
    expect_one_line_error([&] { strata::load_checkpoint_params(dir, p); },
                          {dir + "/model.safetensors", "tensor 'attn_norm'", "[2, 16]", "[3, 16]"});
    strata::AdamW o(deeper, strata::AdamWConfig{});
    expect_one_line_error([&] { strata::load_checkpoint_optimizer(dir, o); },
                          {dir + "/optimizer.safetensors", "tensor 'm.attn_norm'", "[2, 16]", "[3, 16]"});
  }
  {
    const strata::ParamLayout wider(small_llama(2, 32));
    strata::ParamBuffer p(wider);
    expect_one_line_error([&] { strata::load_checkpoint_params(dir, p); },
                          {"tensor 'tok_embedding'", "[64, 16]", "[64, 32]"});
  }
  {
    const strata::ParamLayout gpt2(small_gpt2());
    strata::ParamBuffer p(gpt2);
    expect_one_line_error([&] { strata::load_checkpoint_params(dir, p); },
                          {"tensor 'pos_embedding' is missing"});
  }
  // A file with every tensor plus one more.
  const strata::ParamLayout shallow(small_llama(1));
  std::vector<strata::TensorView> views;
  for (const strata::ParamEntry& e : layout_.entries())
    views.push_back({e.spec.name, strata::DType::kF32, e.stored_shape(), params_.data() + e.offset});
  const float extra = 1.0f;
  views.push_back({"bonus", strata::DType::kF32, {}, &extra});
  strata::write_safetensors(path("extra.safetensors"), views);
  strata::ParamBuffer p(layout_);
  expect_one_line_error([&] { strata::load_params_safetensors(path("extra.safetensors"), p); },
                        {path("extra.safetensors"), "unexpected tensor 'bonus'"});
  // A tensor of the right shape but another dtype.
  std::vector<double> d(static_cast<size_t>(layout_.entries()[0].numel()));
  views.pop_back();
  views[0] = {views[0].name, strata::DType::kF64, views[0].shape, d.data()};
  strata::write_safetensors(path("f64.safetensors"), views);
  expect_one_line_error([&] { strata::load_params_safetensors(path("f64.safetensors"), p); },
                        {path("f64.safetensors"), "tensor 'tok_embedding' is F64, expected F32"});
}

TEST_F(CheckpointTest, ParamsSafetensorsForExchange) {
  const std::string p = path("w.safetensors");
  strata::save_params_safetensors(p, params_, {{"source", "test"}, {"format", "override"}});
  const auto f = strata::SafetensorsFile::open(p);
  EXPECT_EQ(f.metadata().at("source"), "test");
  EXPECT_EQ(f.metadata().at("format"), "override");
  EXPECT_EQ(f.metadata().at("family"), "llama");
  strata::ParamBuffer p2(layout_);
  strata::load_params_safetensors(p, p2);
  EXPECT_TRUE(bit_equal(p2, params_));
}

TEST_F(CheckpointTest, FailedSaveLeavesNothingAndKeepsExistingCheckpoints) {
  // The run folder is a regular file.
  spit(path("runfile"), "x");
  expect_one_line_error([&] { strata::save_checkpoint(path("runfile"), 1, params_, &opt_, {}, 0); },
                        {path("runfile")});
  EXPECT_EQ(slurp(path("runfile")), "x");

  // A save that fails after its tensors are written (the trainer state cannot be encoded as JSON) while a
  // checkpoint of the same step and an older one exist: both stay as they were, no temporary is left.
  save(1);
  save(2);
  const strata::ParamBuffer saved = params_;
  fill(params_, 77);
  expect_one_line_error(
      [&] {
        strata::save_checkpoint(run_, 2, params_, &opt_, {{"bad", std::string("\xFF\xFE")}}, 1);
      },
      {"trainer state"});
  EXPECT_EQ(listing(), (std::vector<std::string>{"ckpt-00000001", "ckpt-00000002"}));
  strata::ParamBuffer p2(layout_);
  strata::load_checkpoint_params(run_ + "/ckpt-00000002", p2);
  EXPECT_TRUE(bit_equal(p2, saved));

  expect_one_line_error([&] { strata::save_checkpoint(run_, 3, params_, &opt_, nlohmann::json::array(), 0); },
                        {"trainer state must be a JSON object"});
  expect_one_line_error([&] { strata::save_checkpoint(run_, -1, params_, &opt_, {}, 0); }, {"step"});
  EXPECT_EQ(listing().size(), 2u);

  // An unwritable run folder (permissions do not bind root, so only as another user).
  if (::geteuid() != 0) {
    ASSERT_EQ(::chmod(run_.c_str(), 0555), 0);
    expect_one_line_error([&] { save(4); }, {run_});
    ::chmod(run_.c_str(), 0755);
    EXPECT_EQ(listing(), (std::vector<std::string>{"ckpt-00000001", "ckpt-00000002"}));
  }
}

// ---- models/model_config_json
// ----------------------------------------------------------------------------------

TEST(ModelConfigJsonTest, EveryPresetRoundTrips) {
  for (const strata::models::ModelConfig& c : strata::models::presets()) {
    SCOPED_TRACE(c.name);
    const nlohmann::json j = strata::models::model_config_to_json(c);
    const strata::models::ModelConfig r =
        strata::models::model_config_from_json(nlohmann::json::parse(j.dump()));
    EXPECT_EQ(r.name, c.name);
    EXPECT_EQ(r.family, c.family);
    EXPECT_EQ(r.n_layer, c.n_layer);
    EXPECT_EQ(r.d_model, c.d_model);
    EXPECT_EQ(r.n_head, c.n_head);
    EXPECT_EQ(r.n_kv_head, c.n_kv_head);
    EXPECT_EQ(r.d_ff, c.d_ff);
    EXPECT_EQ(r.vocab_size, c.vocab_size);
    EXPECT_EQ(r.max_seq_len, c.max_seq_len);
    EXPECT_EQ(r.norm_eps, c.norm_eps);
    EXPECT_EQ(r.rope_base, c.rope_base);
    EXPECT_EQ(j.size(), 11u);
  }
  const nlohmann::json j = strata::models::model_config_to_json(strata::models::preset("gpt2-124m"));
  EXPECT_EQ(j["family"], "gpt2");
  EXPECT_NE(j.dump().find("\"norm_eps\":1e-05"), std::string::npos) << j.dump();
  strata::models::ModelConfig odd = small_llama();
  odd.norm_eps = 1.2345678e-6f;
  EXPECT_EQ(strata::models::model_config_from_json(
                nlohmann::json::parse(strata::models::model_config_to_json(odd).dump()))
                .norm_eps,
            odd.norm_eps);
}

TEST(ModelConfigJsonTest, ErrorsNameTheField) {
  const nlohmann::json good = strata::models::model_config_to_json(small_llama());
  const auto bad = [&](const std::function<void(nlohmann::json&)>& edit,
                       const std::vector<std::string>& frags) {
    nlohmann::json j = good;
    edit(j);
    expect_one_line_error([&] { strata::models::model_config_from_json(j); }, frags);
  };
  bad([](nlohmann::json& j) { j.erase("n_head"); }, {"'n_head' is missing"});
  bad([](nlohmann::json& j) { j["n_layer"] = "4"; }, {"'n_layer' must be an integer"});
  bad([](nlohmann::json& j) { j["d_model"] = 16.5; }, {"'d_model' must be an integer"});
  bad([](nlohmann::json& j) { j["vocab_size"] = int64_t{1} << 40; }, {"'vocab_size' is out of range"});
  bad([](nlohmann::json& j) { j["norm_eps"] = "small"; }, {"'norm_eps' must be a number"});
  bad([](nlohmann::json& j) { j["name"] = 3; }, {"'name' must be a string"});
  bad([](nlohmann::json& j) { j["family"] = "bert"; }, {"unknown family 'bert'"});
  bad([](nlohmann::json& j) { j["n_layers"] = 4; }, {"unknown field 'n_layers'"});
  bad([](nlohmann::json& j) { j["n_kv_head"] = 3; }, {"n_kv_head"});  // validate()
  bad([](nlohmann::json& j) { j = nlohmann::json::array(); }, {"must be a JSON object"});
}

}  // namespace
