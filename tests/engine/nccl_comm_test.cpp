// The device collectives (engine/comm_nccl.h) against sums computed on the host. Built twice
// (tests/CMakeLists.txt): on the GPU against NCCL (label gpu, skips without a GPU; one process, a world of
// one) and on the CPU emulation's NCCL (kernels/cuda/emu/nccl_emu.cpp, label cpu-emu), which ctest runs both
// as one process and under `mpirun -np 2` (label mpi). Every rank builds every rank's input from seeds, so
// each checks the collectives against sums it computes itself: the sum over ranks in rank order in fp32,
// rounded once for bf16. That is what the emulation computes for any world and what NCCL computes for two
// ranks (a + b, rounded once); a larger GPU world sums in another order, and is compared within a tolerance.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/comm.h"
#include "engine/comm_nccl.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace strata {
namespace {

using test::bf16;

#if defined(STRATA_CUDA_EMU)
constexpr bool kEmulated = true;
#else
constexpr bool kEmulated = false;
#endif

Communicator& comm() {
  return world_communicator();
}

bool exact_sums(int world) {
  return kEmulated || world <= 2;
}

// The collectives are enqueued on the default stream; DeviceBuffer::download synchronises the device.
cudaStream_t const kStream = nullptr;

// Rank r's n fp32 values for a case (seed): full fp32 precision, uniform in [-1, 1).
std::vector<float> f32_input(size_t n, int rank, uint64_t seed) {
  std::mt19937_64 rng(seed * 1000 + static_cast<uint64_t>(rank));
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}
// Rank r's n bf16 values (as floats) for a case.
std::vector<float> bf16_input(size_t n, int rank, uint64_t seed) {
  return test::random_bf16_values(n, seed * 1000 + static_cast<uint64_t>(rank));
}

// The element type of a case: float or bf16, and its DeviceDType.
template <class T>
struct Elem;
template <>
struct Elem<float> {
  static constexpr DeviceDType kType = DeviceDType::kF32;
  static float from_float(float x) { return x; }
  static float to_float(float x) { return x; }
  static std::vector<float> input(size_t n, int rank, uint64_t seed) { return f32_input(n, rank, seed); }
};
template <>
struct Elem<bf16> {
  static constexpr DeviceDType kType = DeviceDType::kBF16;
  static bf16 from_float(float x) { return test::float_to_bf16(x); }
  static float to_float(bf16 x) { return test::bf16_to_float(x); }
  static std::vector<float> input(size_t n, int rank, uint64_t seed) { return bf16_input(n, rank, seed); }
};

template <class T>
std::vector<T> to_elems(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = Elem<T>::from_float(v[i]);
  return out;
}

// The element-wise sum over ranks 0..R-1 in rank order, in fp32, of each rank's input (padded with zeros to
// `padded` elements), rounded once to T.
template <class T>
std::vector<T> rank_order_sum(size_t n, size_t padded, int world, uint64_t seed) {
  std::vector<float> sum(padded, 0.0f);
  for (int r = 0; r < world; ++r) {
    const std::vector<float> x = Elem<T>::input(n, r, seed);
    for (size_t i = 0; i < n; ++i) sum[i] = r == 0 ? x[i] : sum[i] + x[i];
  }
  return to_elems<T>(sum);
}

template <class T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// "" when got == want element-wise (bit for bit when `exact`, else within tol), else the first difference and
// how many there are.
template <class T>
std::string compare(const T* got, const T* want, size_t n, bool exact, double tol = 0.0) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < n; ++i) {
    const double g = Elem<T>::to_float(got[i]), w = Elem<T>::to_float(want[i]);
    const bool ok = exact ? same_bits(got[i], want[i]) : std::abs(g - w) <= tol;
    if (!ok && bad++ == 0) first = i;
  }
  if (bad == 0) return {};
  std::ostringstream os;
  os << bad << " of " << n << " elements differ; first at " << first << ": got "
     << Elem<T>::to_float(got[first]) << ", want " << Elem<T>::to_float(want[first]);
  return os.str();
}

// Tolerance of a sum over a GPU world of more than two ranks (another order, bf16 rounded per ring hop).
template <class T>
double sum_tol(int world) {
  return (sizeof(T) == 4 ? 1e-6 : 1e-2) * world;
}

template <class T>
void check_all_reduce(uint64_t seed) {
  NcclCommunicator nc(comm());
  const int R = nc.world();
  const size_t n = 1003;  // not a multiple of 16
  test::DeviceBuffer<T> buf(to_elems<T>(Elem<T>::input(n, nc.rank(), seed)));
  nc.all_reduce_sum(buf.get(), static_cast<int64_t>(n), Elem<T>::kType, kStream);
  const std::vector<T> got = buf.download();
  const std::vector<T> want = rank_order_sum<T>(n, n, R, seed);
  EXPECT_EQ(compare(got.data(), want.data(), n, exact_sums(R), sum_tol<T>(R)), "") << "world " << R;
}

TEST(NcclCommunicator, AllReduceSumF32MatchesTheRankOrderSum) {
  STRATA_SKIP_WITHOUT_GPU();
  check_all_reduce<float>(1);
}

TEST(NcclCommunicator, AllReduceSumBf16MatchesTheFp32SumRoundedOnce) {
  STRATA_SKIP_WITHOUT_GPU();
  check_all_reduce<bf16>(2);
}

// reduce_scatter_sum over a buffer of n elements padded to world * shard_stride (engine/comm.h's split), out
// of place and in place (out = in + rank * stride, NCCL's in-place rule).
template <class T>
void check_reduce_scatter(uint64_t seed, bool in_place) {
  NcclCommunicator nc(comm());
  const int R = nc.world(), me = nc.rank();
  const size_t n = 1000, stride = static_cast<size_t>(shard_stride(static_cast<int64_t>(n), R));
  const size_t padded = stride * static_cast<size_t>(R);
  std::vector<float> mine = Elem<T>::input(n, me, seed);
  mine.resize(padded, 0.0f);
  const std::vector<T> in_host = to_elems<T>(mine);
  test::DeviceBuffer<T> in(in_host);
  test::DeviceBuffer<T> out_buf(in_place ? 0 : stride);  // poisoned: an element not written stays NaN
  T* out = in_place ? in.get() + static_cast<size_t>(me) * stride : out_buf.get();
  nc.reduce_scatter_sum(in.get(), out, static_cast<int64_t>(stride), Elem<T>::kType, kStream);
  const std::vector<T> all = in.download();
  const std::vector<T> got =
      in_place ? std::vector<T>(all.begin() + static_cast<std::ptrdiff_t>(me * stride),
                                all.begin() + static_cast<std::ptrdiff_t>((me + 1) * stride))
               : out_buf.download();
  const std::vector<T> sum = rank_order_sum<T>(n, padded, R, seed);
  EXPECT_EQ(compare(got.data(), sum.data() + static_cast<size_t>(me) * stride, stride, exact_sums(R),
                    sum_tol<T>(R)),
            "")
      << "world " << R << " rank " << me;
  if (!in_place) {
    EXPECT_EQ(compare(all.data(), in_host.data(), padded, true), "") << "the input changed";
  }
}

TEST(NcclCommunicator, ReduceScatterF32GivesThisRanksShardOfTheSum) {
  STRATA_SKIP_WITHOUT_GPU();
  check_reduce_scatter<float>(3, false);
}

TEST(NcclCommunicator, ReduceScatterBf16GivesThisRanksShardOfTheSum) {
  STRATA_SKIP_WITHOUT_GPU();
  check_reduce_scatter<bf16>(4, false);
}

TEST(NcclCommunicator, ReduceScatterInPlace) {
  STRATA_SKIP_WITHOUT_GPU();
  check_reduce_scatter<float>(5, true);
  check_reduce_scatter<bf16>(6, true);
}

// all_gather in place: rank r holds only shard r (the others poisoned); afterwards every rank holds every
// rank's shard, bit for bit.
template <class T>
void check_all_gather(uint64_t seed) {
  NcclCommunicator nc(comm());
  const int R = nc.world(), me = nc.rank();
  const size_t stride = static_cast<size_t>(shard_stride(1000, R)), padded = stride * static_cast<size_t>(R);
  test::DeviceBuffer<T> buf(padded);  // poisoned
  std::vector<T> host = buf.download();
  const std::vector<T> shard = to_elems<T>(Elem<T>::input(stride, me, seed));
  std::copy(shard.begin(), shard.end(), host.begin() + static_cast<std::ptrdiff_t>(me * stride));
  buf.upload(host);
  nc.all_gather(buf.get(), static_cast<int64_t>(stride), Elem<T>::kType, kStream);
  const std::vector<T> got = buf.download();
  for (int r = 0; r < R; ++r) {
    const std::vector<T> want = to_elems<T>(Elem<T>::input(stride, r, seed));
    EXPECT_EQ(compare(got.data() + static_cast<size_t>(r) * stride, want.data(), stride, true), "")
        << "shard " << r << " on rank " << me;
  }
}

TEST(NcclCommunicator, AllGatherInPlaceF32) {
  STRATA_SKIP_WITHOUT_GPU();
  check_all_gather<float>(7);
}

TEST(NcclCommunicator, AllGatherInPlaceBf16) {
  STRATA_SKIP_WITHOUT_GPU();
  check_all_gather<bf16>(8);
}

// reduce_sum to every root in turn (out of place and in place): the root gets the rank-order sum, the other
// ranks' output stays as it was; broadcast from every root: every rank gets the root's data, bit for bit.
template <class T>
void check_reduce_and_broadcast(uint64_t seed) {
  NcclCommunicator nc(comm());
  const int R = nc.world(), me = nc.rank();
  const size_t n = 997;
  for (int root = 0; root < R; ++root) {
    const std::vector<T> x = to_elems<T>(Elem<T>::input(n, me, seed));
    test::DeviceBuffer<T> in(x);
    test::DeviceBuffer<T> out(n);  // poisoned
    const std::vector<T> untouched = out.download();
    nc.reduce_sum(in.get(), out.get(), static_cast<int64_t>(n), root, Elem<T>::kType, kStream);
    const std::vector<T> sum = rank_order_sum<T>(n, n, R, seed);
    const std::vector<T> got = out.download();
    if (me == root) {
      EXPECT_EQ(compare(got.data(), sum.data(), n, exact_sums(R), sum_tol<T>(R)), "") << "root " << root;
    } else {
      EXPECT_EQ(compare(got.data(), untouched.data(), n, true), "") << "a non-root output was written";
    }
    EXPECT_EQ(compare(in.download().data(), x.data(), n, true), "") << "the input changed";
    nc.reduce_sum(in.get(), in.get(), static_cast<int64_t>(n), root, Elem<T>::kType, kStream);
    if (me == root) {
      EXPECT_EQ(compare(in.download().data(), sum.data(), n, exact_sums(R), sum_tol<T>(R)), "");
    }

    test::DeviceBuffer<T> b(to_elems<T>(Elem<T>::input(n, me, seed + 1)));
    nc.broadcast(b.get(), static_cast<int64_t>(n), root, Elem<T>::kType, kStream);
    const std::vector<T> want = to_elems<T>(Elem<T>::input(n, root, seed + 1));
    EXPECT_EQ(compare(b.download().data(), want.data(), n, true), "") << "root " << root << " on rank " << me;
  }
}

TEST(NcclCommunicator, ReduceToEachRootAndBroadcastFromIt) {
  STRATA_SKIP_WITHOUT_GPU();
  check_reduce_and_broadcast<float>(10);
  check_reduce_and_broadcast<bf16>(11);
}

// The bytes each collective sends by the ring model, counted into the host communicator's counters: an
// all-reduce of b bytes 2 (R-1)/R b, a reduce-scatter or all-gather (R-1)/R of the whole buffer; 0 for R = 1.
TEST(NcclCommunicator, CountersFollowTheRingModel) {
  STRATA_SKIP_WITHOUT_GPU();
  NcclCommunicator nc(comm());
  const int R = nc.world();
  const int64_t n = 1000, stride = shard_stride(n, R);
  test::DeviceBuffer<float> f(static_cast<size_t>(stride * R));
  test::DeviceBuffer<bf16> h(static_cast<size_t>(stride * R));
  test::DeviceBuffer<bf16> shard(static_cast<size_t>(stride));
  const CommCounters before = comm().counters();
  nc.all_reduce_sum(f.get(), n, DeviceDType::kF32, kStream);
  nc.all_reduce_sum(h.get(), n, DeviceDType::kBF16, kStream);
  nc.reduce_scatter_sum(h.get(), shard.get(), stride, DeviceDType::kBF16, kStream);
  nc.all_gather(f.get(), stride, DeviceDType::kF32, kStream);
  nc.all_reduce_sum(f.get(), 0, DeviceDType::kF32, kStream);  // nothing to send
  nc.reduce_sum(h.get(), h.get(), n, R - 1, DeviceDType::kBF16, kStream);
  nc.broadcast(f.get(), n, R - 1, DeviceDType::kF32, kStream);
  CUDA_CHECK(cudaDeviceSynchronize());
  const CommCounters& after = comm().counters();
  const double ring = static_cast<double>(R - 1) / R;
  EXPECT_DOUBLE_EQ(after.all_reduce - before.all_reduce, 2.0 * ring * n * 4 + 2.0 * ring * n * 2);
  // The reduce counts with the reduce-scatters, the broadcast with the all-gathers: (R-1)/R of their bytes.
  EXPECT_NEAR(after.reduce_scatter - before.reduce_scatter,
              ring * static_cast<double>(R * stride) * 2 + ring * static_cast<double>(n) * 2, 1e-9);
  EXPECT_NEAR(after.all_gather - before.all_gather,
              ring * static_cast<double>(R * stride) * 4 + ring * static_cast<double>(n) * 4, 1e-9);
  EXPECT_EQ(after.broadcast, before.broadcast);
  EXPECT_EQ(after.small, before.small);
  EXPECT_EQ(after.calls - before.calls, 7);
  if (R == 1) {
    EXPECT_EQ(after.bulk(), before.bulk());
  }
}

// A world of one (NCCL's loopback, no MPI), also on every rank of an mpirun world: the reductions leave the
// data as it is, reduce-scatter copies, and nothing is counted.
TEST(NcclCommunicator, WorldOfOneIsALoopback) {
  STRATA_SKIP_WITHOUT_GPU();
  std::unique_ptr<Communicator> self = make_self_communicator();
  NcclCommunicator nc(*self);
  EXPECT_EQ(nc.world(), 1);
  EXPECT_EQ(nc.rank(), 0);
  const size_t n = 777;
  const std::vector<bf16> x = to_elems<bf16>(bf16_input(n, 0, 9));
  test::DeviceBuffer<bf16> buf(x);
  test::DeviceBuffer<bf16> out(n);
  nc.all_reduce_sum(buf.get(), static_cast<int64_t>(n), DeviceDType::kBF16, kStream);
  nc.all_gather(buf.get(), static_cast<int64_t>(n), DeviceDType::kBF16, kStream);
  nc.reduce_scatter_sum(buf.get(), out.get(), static_cast<int64_t>(n), DeviceDType::kBF16, kStream);
  EXPECT_EQ(compare(buf.download().data(), x.data(), n, true), "");
  EXPECT_EQ(compare(out.download().data(), x.data(), n, true), "");
  EXPECT_EQ(self->counters().bulk(), 0.0);
  EXPECT_EQ(self->counters().calls, 3);
}

}  // namespace
}  // namespace strata

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  strata::Communicator& c = strata::world_communicator();
#if !defined(STRATA_CUDA_EMU)
  // Each rank on its own device (as the trainer selects it) before NCCL joins on the current device.
  int devices = 0;
  if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0)
    CUDA_CHECK(cudaSetDevice(c.local_rank() % devices));
  else
    (void)cudaGetLastError();
#endif
  const int rc = RUN_ALL_TESTS();
  // Every rank must pass: the exit status is the worst over the ranks.
  double worst = rc;
  c.all_reduce_small(&worst, 1, strata::ReduceOp::kMax);
  strata::finalize_world();
  return static_cast<int>(worst);
}
