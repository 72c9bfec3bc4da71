// engine/comm.h: the communicator of data-parallel training: which rank this process is, and the
// collectives the trainer and the backends need, behind one interface with two implementations:
//   MPI   (engine/comm.cpp, host memory): the CPU backend's gradients and parameters, and the small host
//   values
//         every backend exchanges (losses, norms, stop signals, config checks), over MPI_COMM_WORLD;
//   NCCL  (engine/comm_nccl.h, device memory): the CUDA backend's gradients and parameters, bootstrapped from
//         the MPI communicator (the unique id is broadcast over MPI).
// A process started without a launcher is world 1 (every collective is a copy), in any build; a build without
// MPI refuses to run under mpirun rather than train N independent copies.
//
// Launch. `mpirun -np N strata train ...` (OpenMPI, MPICH/Hydra) or `srun --mpi=pmix strata train ...`: the
// world is initialised (MPI_Init_thread) only when the environment names a launcher (OMPI_COMM_WORLD_SIZE,
// PMI_SIZE, PMIX_RANK). The local rank (the GPU a rank uses) is the rank within MPI_COMM_TYPE_SHARED.
//
// Failures. Every collective runs under a watchdog: a collective that has not completed `timeout` seconds
// after it began (a rank died, hangs, or is stopped) ends this process with one line naming the rank, the
// host, the collective and what the run was doing, and exit status 1; the launcher then ends the others.
// Every fatal error is printed with "rank r/R on host h" (engine/check.h's process_description()).
//
// Shards (ZeRO-1). A flat buffer of n elements is split into `world` contiguous ranges of
// shard_stride(n, world) elements (a multiple of 16), the last one shorter: rank r owns
// [r * stride, min((r + 1) * stride, n)). reduce_scatter and all_gather use that split.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace strata {

enum class ReduceOp { kSum, kMax, kMin };

struct ShardRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
// Elements per shard for n elements over `world` ranks: ceil(n / world) rounded up to a multiple of 16.
int64_t shard_stride(int64_t n, int world);
ShardRange shard_range(int64_t n, int world, int rank);

// What this process sent in collectives since the last reset, in bytes, by the ring cost model each
// collective is counted with (growth/comm_cost.h): an all-reduce of b bytes sends 2 (R-1)/R b, a
// reduce-scatter or all-gather of b bytes (the whole buffer) sends (R-1)/R b. Small host values (losses,
// flags, config strings) are counted apart.
struct CommCounters {
  double all_reduce = 0, reduce_scatter = 0, all_gather = 0, broadcast = 0;
  double small = 0;  // host scalars and strings (all_reduce_small, all_gather_strings)
  int64_t calls = 0;
  double bulk() const { return all_reduce + reduce_scatter + all_gather + broadcast; }
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual const char* kind() const = 0;  // "self", "mpi"
  int rank() const { return rank_; }
  int world() const { return world_; }
  int local_rank() const { return local_rank_; }
  int local_world() const { return local_world_; }
  // Distinct host names and their rank counts, "vm (2)" or "a (8), b (8)".
  const std::string& hosts() const { return hosts_; }

  // Host-memory collectives over float buffers (the CPU backend's gradients and parameters).
  // all_reduce: data (n) <- the element-wise op over ranks.
  virtual void all_reduce(float* data, int64_t n, ReduceOp op) = 0;
  // reduce_scatter: out (this rank's shard_range(n, world, rank) of the sum over ranks of in (n)).
  virtual void reduce_scatter(const float* in, float* out, int64_t n) = 0;
  // all_gather in place: every rank's shard_range of data (n) is sent to every other rank.
  virtual void all_gather(float* data, int64_t n) = 0;
  // data (bytes) from root to every rank.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  // Small host values: doubles reduced element-wise, and one string per rank gathered everywhere (config
  // checks, checkpoint file records). Counted in CommCounters::small.
  virtual void all_reduce_small(double* data, int n, ReduceOp op) = 0;
  virtual std::vector<std::string> all_gather_strings(const std::string& mine) = 0;
  virtual void barrier() = 0;
  // The element-wise sum over the ranks of each rank's `mine` (the same length on every rank), added in rank
  // order starting from 0.0, so every rank gets the same bits whatever order MPI reduces in: the values are
  // gathered exactly (an all_reduce_small of per-rank slots, zeros elsewhere), then summed here.
  std::vector<double> sum_in_rank_order(const std::vector<double>& mine);

  // The watchdog: what the run is doing (printed if a collective times out), and the timeout.
  void set_activity(const std::string& what);
  void set_timeout(double seconds);
  double timeout() const;

  CommCounters& counters() { return counters_; }

  // Each collective holds a Guard: the watchdog ends the process if it lives past the timeout, and the
  // collective is counted in counters().calls. Device collectives (engine/comm_nccl.h) are asynchronous and
  // counted where they are enqueued; the CUDA backend holds a Guard with count = false around the
  // synchronisation that waits for them.
  class Guard {
   public:
    Guard(Communicator& c, const char* op, int64_t bytes, bool count = true);
    ~Guard();
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;

   private:
    Communicator& c_;
  };

 protected:
  int rank_ = 0, world_ = 1, local_rank_ = 0, local_world_ = 1;
  std::string hosts_;
  CommCounters counters_;
  struct Watchdog;
  std::shared_ptr<Watchdog> watchdog_;
  void start_watchdog();
};

// The process's communicator: initialises MPI on first use when a launcher started this process (see above),
// else a world of 1. Errors (strata::Error): launched by mpirun but built without MPI; MPI fails to start.
Communicator& world_communicator();
// True when world_communicator() has initialised MPI.
bool world_is_mpi();
// At a normal exit: MPI_Finalize when MPI was initialised (after a barrier), else nothing.
void finalize_world();
// After a fatal error on this rank: MPI_Abort (the launcher ends every rank) when the world has more than one
// rank, else nothing. Returns only when there is nothing to abort.
void abort_world(int status);

// The trainer's SIGINT / SIGTERM handler reports the signal here (async-signal-safe). A stop signal normally
// ends the run after the current step, with a checkpoint, once every rank agrees; but when a collective has
// already waited kSignalGraceSeconds with a signal pending, the other ranks are gone (a launcher stopping the
// job after one rank died): the watchdog then ends this process with a line saying so and status 128 +
// signal.
void note_stop_signal(int sig);
inline constexpr double kSignalGraceSeconds = 5.0;

// A world of one process (tests, single-process runs).
std::unique_ptr<Communicator> make_self_communicator();

}  // namespace strata
