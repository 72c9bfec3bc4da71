// engine/comm.cpp: the world communicator (MPI when a launcher started this process and the build has MPI,
// else a world of one), the collective watchdog, and the shard split. See engine/comm.h.
// mpi.h first: engine/check.h defines MPI_CHECK only when MPI's API is already declared.
#if defined(STRATA_HAVE_MPI)
#include <mpi.h>
#endif

#include "engine/comm.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "engine/check.h"

namespace strata {

int64_t shard_stride(int64_t n, int world) {
  STRATA_CHECK(n >= 0 && world >= 1, "shard_stride(", n, ", ", world, ")");
  const int64_t per = (n + world - 1) / world;
  return (per + 15) / 16 * 16;
}

ShardRange shard_range(int64_t n, int world, int rank) {
  STRATA_CHECK(rank >= 0 && rank < world, "shard_range: rank ", rank, " of ", world);
  const int64_t s = shard_stride(n, world);
  return {std::min(n, s * rank), std::min(n, s * (rank + 1))};
}

namespace {
std::atomic<int> g_pending_signal{0};
}  // namespace

void note_stop_signal(int sig) {
  g_pending_signal.store(sig);
}

// ---- watchdog
// ----------------------------------------------------------------------------------------------

struct Communicator::Watchdog {
  std::mutex mu;
  std::condition_variable cv;
  bool quit = false;
  // The collective in flight (op == nullptr: none), since when, its size.
  const char* op = nullptr;
  int64_t bytes = 0;
  std::chrono::steady_clock::time_point since;
  std::string activity = "starting";
  double timeout_s = 600.0;
  std::thread thread;

  void run() {
    std::unique_lock<std::mutex> lock(mu);
    while (!quit) {
      cv.wait_for(lock, std::chrono::milliseconds(100));
      if (quit || op == nullptr) continue;
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
      if (const int sig = g_pending_signal.load(); sig != 0 && waited >= kSignalGraceSeconds) {
        std::fprintf(
            stderr,
            "strata: error: %s: signal %d arrived while collective %s waited %.0f s for the other ranks "
            "while %s: they have ended; exiting without a checkpoint\n",
            process_description().c_str(), sig, op, waited, activity.c_str());
        std::fflush(stderr);
        std::_Exit(128 + sig);
      }
      if (waited < timeout_s) continue;
      // A peer is gone or stuck: nothing on this rank can finish the collective. End the process (the
      // launcher then ends the others); no checkpoint, since this rank's state is mid-step.
      std::fprintf(stderr,
                   "strata: error: %s: collective %s (%lld bytes) did not complete within %.0f s while %s: "
                   "another rank has died, hung or been stopped (raise --comm-timeout for slow steps)\n",
                   process_description().c_str(), op, static_cast<long long>(bytes), timeout_s,
                   activity.c_str());
      std::fflush(stderr);
      std::fflush(stdout);
      std::_Exit(1);
    }
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu);
      quit = true;
    }
    cv.notify_all();
    if (thread.joinable()) thread.join();
  }
};

void Communicator::start_watchdog() {
  watchdog_ = std::make_shared<Watchdog>();
  watchdog_->thread = std::thread([w = watchdog_.get()] { w->run(); });
}

Communicator::Guard::Guard(Communicator& c, const char* op, int64_t bytes, bool count) : c_(c) {
  if (count) ++c_.counters_.calls;
  if (!c_.watchdog_) return;
  std::lock_guard<std::mutex> lock(c_.watchdog_->mu);
  c_.watchdog_->op = op;
  c_.watchdog_->bytes = bytes;
  c_.watchdog_->since = std::chrono::steady_clock::now();
}

Communicator::Guard::~Guard() {
  if (!c_.watchdog_) return;
  std::lock_guard<std::mutex> lock(c_.watchdog_->mu);
  c_.watchdog_->op = nullptr;
}

std::vector<double> Communicator::sum_in_rank_order(const std::vector<double>& mine) {
  const size_t n = mine.size();
  std::vector<double> all(n * static_cast<size_t>(world_), 0.0);
  std::copy(mine.begin(), mine.end(), all.begin() + static_cast<std::ptrdiff_t>(n * static_cast<size_t>(rank_)));
  all_reduce_small(all.data(), static_cast<int>(all.size()), ReduceOp::kSum);
  std::vector<double> sum(n, 0.0);
  for (int r = 0; r < world_; ++r)
    for (size_t i = 0; i < n; ++i) sum[i] += all[static_cast<size_t>(r) * n + i];
  return sum;
}

void Communicator::set_activity(const std::string& what) {
  if (!watchdog_) return;
  std::lock_guard<std::mutex> lock(watchdog_->mu);
  watchdog_->activity = what;
}

void Communicator::set_timeout(double seconds) {
  STRATA_REQUIRE(seconds > 0, "--comm-timeout must be positive (got ", seconds, ")");
  if (!watchdog_) return;
  std::lock_guard<std::mutex> lock(watchdog_->mu);
  watchdog_->timeout_s = seconds;
}

double Communicator::timeout() const {
  if (!watchdog_) return 0.0;
  std::lock_guard<std::mutex> lock(watchdog_->mu);
  return watchdog_->timeout_s;
}

namespace {

// ---- world of one
// ------------------------------------------------------------------------------------------

class SelfCommunicator final : public Communicator {
 public:
  SelfCommunicator() { hosts_ = host_name() + " (1)"; }
  const char* kind() const override { return "self"; }
  void all_reduce(float*, int64_t, ReduceOp) override {}
  void reduce_scatter(const float* in, float* out, int64_t n) override {
    if (in != out) std::memmove(out, in, static_cast<size_t>(n) * sizeof(float));
  }
  void all_gather(float*, int64_t) override {}
  void broadcast(void*, int64_t, int) override {}
  void all_reduce_small(double*, int, ReduceOp) override {}
  std::vector<std::string> all_gather_strings(const std::string& mine) override { return {mine}; }
  void barrier() override {}
};

// "a (2), b (2)": hosts in order of their first rank.
std::string describe_hosts(const std::vector<std::string>& per_rank) {
  std::vector<std::string> order;
  std::map<std::string, int> count;
  for (const std::string& h : per_rank)
    if (count[h]++ == 0) order.push_back(h);
  std::string s;
  for (const std::string& h : order) s += cat(s.empty() ? "" : ", ", h, " (", count[h], ")");
  return s;
}

// The world size a launcher announced in the environment, 0 when none did.
int launcher_world_size() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"}) {
    if (const char* v = std::getenv(var); v != nullptr && *v) return std::max(1, std::atoi(v));
  }
  if (std::getenv("PMIX_RANK") != nullptr) {
    const char* n = std::getenv("SLURM_NTASKS");
    return n != nullptr ? std::max(1, std::atoi(n)) : 1;
  }
  return 0;
}

#if defined(STRATA_HAVE_MPI)

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return MPI_SUM;
    case ReduceOp::kMax:
      return MPI_MAX;
    case ReduceOp::kMin:
      return MPI_MIN;
  }
  return MPI_SUM;
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_));
    MPI_Comm local;
    MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local));
    MPI_CHECK(MPI_Comm_rank(local, &local_rank_));
    MPI_CHECK(MPI_Comm_size(local, &local_world_));
    MPI_CHECK(MPI_Comm_free(&local));
    ProcessContext& pc = process_context();
    pc.rank = rank_;
    pc.world = world_;
    if (world_ > 1) start_watchdog();
    set_activity("exchanging host names");
    hosts_ = describe_hosts(all_gather_strings(host_name()));
  }
  const char* kind() const override { return "mpi"; }

  void all_reduce(float* data, int64_t n, ReduceOp op) override {
    const Guard g(*this, "MPI_Allreduce", n * 4);
    counters_.all_reduce += ring_factor() * 2.0 * static_cast<double>(n) * 4.0;
    for (int64_t done = 0; done < n;) {  // int counts: chunks of at most 2^30 elements
      const int c = static_cast<int>(std::min<int64_t>(n - done, int64_t{1} << 30));
      MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + done, c, MPI_FLOAT, mpi_op(op), MPI_COMM_WORLD));
      done += c;
    }
  }
  void reduce_scatter(const float* in, float* out, int64_t n) override {
    const Guard g(*this, "MPI_Reduce_scatter", n * 4);
    counters_.reduce_scatter += ring_factor() * static_cast<double>(n) * 4.0;
    std::vector<int> counts, displs;
    split(n, &counts, &displs);
    MPI_CHECK(MPI_Reduce_scatter(in, out, counts.data(), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
  }
  void all_gather(float* data, int64_t n) override {
    const Guard g(*this, "MPI_Allgatherv", n * 4);
    counters_.all_gather += ring_factor() * static_cast<double>(n) * 4.0;
    std::vector<int> counts, displs;
    split(n, &counts, &displs);
    MPI_CHECK(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, counts.data(), displs.data(),
                             MPI_FLOAT, MPI_COMM_WORLD));
  }
  void broadcast(void* data, int64_t bytes, int root) override {
    const Guard g(*this, "MPI_Bcast", bytes);
    if (rank_ == root) counters_.broadcast += static_cast<double>(bytes);
    for (int64_t done = 0; done < bytes;) {
      const int c = static_cast<int>(std::min<int64_t>(bytes - done, int64_t{1} << 30));
      MPI_CHECK(MPI_Bcast(static_cast<char*>(data) + done, c, MPI_BYTE, root, MPI_COMM_WORLD));
      done += c;
    }
  }
  void all_reduce_small(double* data, int n, ReduceOp op) override {
    const Guard g(*this, "MPI_Allreduce", int64_t{n} * 8);
    counters_.small += 2.0 * ring_factor() * n * 8.0;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data, n, MPI_DOUBLE, mpi_op(op), MPI_COMM_WORLD));
  }
  std::vector<std::string> all_gather_strings(const std::string& mine) override {
    const Guard g(*this, "MPI_Allgatherv", static_cast<int64_t>(mine.size()));
    STRATA_CHECK(mine.size() < (size_t{1} << 30), "all_gather_strings: ", mine.size(), " bytes");
    const int len = static_cast<int>(mine.size());
    std::vector<int> lens(static_cast<size_t>(world_)), displs(lens.size());
    MPI_CHECK(MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, MPI_COMM_WORLD));
    int64_t total = 0;
    for (size_t r = 0; r < lens.size(); ++r) {
      displs[r] = static_cast<int>(total);
      total += lens[r];
    }
    STRATA_CHECK(total < INT_MAX, "all_gather_strings: ", total, " bytes in all");
    std::string all(static_cast<size_t>(total), '\0');
    MPI_CHECK(MPI_Allgatherv(mine.data(), len, MPI_CHAR, all.data(), lens.data(), displs.data(), MPI_CHAR,
                             MPI_COMM_WORLD));
    counters_.small += static_cast<double>(total - len);
    std::vector<std::string> out;
    for (size_t r = 0; r < lens.size(); ++r)
      out.push_back(all.substr(static_cast<size_t>(displs[r]), static_cast<size_t>(lens[r])));
    return out;
  }
  void barrier() override {
    const Guard g(*this, "MPI_Barrier", 0);
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
  }

 private:
  double ring_factor() const { return static_cast<double>(world_ - 1) / world_; }
  void split(int64_t n, std::vector<int>* counts, std::vector<int>* displs) const {
    STRATA_CHECK(n < INT_MAX, "MPI collective over ", n, " elements: more than the int counts MPI takes");
    for (int r = 0; r < world_; ++r) {
      const ShardRange s = shard_range(n, world_, r);
      counts->push_back(static_cast<int>(s.size()));
      displs->push_back(static_cast<int>(s.begin));
    }
  }
};

#endif  // STRATA_HAVE_MPI

std::unique_ptr<Communicator> g_world;
bool g_mpi = false;

}  // namespace

std::unique_ptr<Communicator> make_self_communicator() {
  return std::make_unique<SelfCommunicator>();
}

Communicator& world_communicator() {
  if (g_world) return *g_world;
  const int announced = launcher_world_size();
#if defined(STRATA_HAVE_MPI)
  if (announced > 0) {
    int provided = 0;
    const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    STRATA_REQUIRE(rc == MPI_SUCCESS, "MPI_Init_thread failed (error ", rc, ") under the launcher");
    g_mpi = true;
    g_world = std::make_unique<MpiCommunicator>();
    return *g_world;
  }
#else
  STRATA_REQUIRE(announced <= 1, "started as one of ", announced,
                 " ranks by a launcher (mpirun / srun), but this strata was built without MPI: install "
                 "libopenmpi-dev (bash scripts/setup.sh) and rebuild");
#endif
  g_world = make_self_communicator();
  return *g_world;
}

bool world_is_mpi() {
  return g_mpi;
}

void finalize_world() {
#if defined(STRATA_HAVE_MPI)
  if (g_mpi) {
    g_world->barrier();
    g_world.reset();
    MPI_Finalize();
    g_mpi = false;
  }
#endif
}

void abort_world(int status) {
#if defined(STRATA_HAVE_MPI)
  if (g_mpi && g_world->world() > 1) {
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, status);
  }
  if (g_mpi) {
    g_world.reset();
    MPI_Finalize();
    g_mpi = false;
  }
#else
  (void)status;
#endif
}

}  // namespace strata
