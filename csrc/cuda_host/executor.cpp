// Runs kernel grids on the CPU: blocks one after another, the threads of a block as fibers
// (ucontext) on one OS thread. A thread runs until it finishes or reaches __syncthreads;
// when every thread of the block waits at the barrier, all continue. That is
// __syncthreads' meaning for any number of barriers, without OS threads per CUDA thread.
//
// What it checks, as a GPU would: the launch configuration, the parameter block against
// the device's limit, that every thread of a block reaches the same barriers (a barrier
// some threads skip, or two different barriers, fails the launch), and illegal accesses:
// misaligned or null ones through the compiler's checks (-fsanitize=alignment,null on the
// kernels, handled below), and any access to unmapped memory (SIGSEGV/SIGBUS during a
// launch). Each stops its block and fails the launch, with the thread and the address.
// What it cannot see: data races between threads of a block (threads run one at a time,
// forward or reverse; see set_reverse_order), accesses outside the tensors that land on
// mapped memory (tests put guard bytes around every tensor), and warp-level timing.
#include <cxxabi.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "cuda_host/devices.h"
#include "cuda_host/launch.h"

namespace fusedopt::cuda_host {
namespace {

uint3 g_thread_index{0, 0, 0}, g_block_index{0, 0, 0};
dim3 g_block_dim, g_grid_dim;

const DeviceDescription kDevices[kDeviceCount] = {
    {9, 0, 32764},  // large parameter blocks: CUDA 12.1+ driver, Volta or newer
    {6, 0, 4096},   // classic parameter blocks only
};

// ---- errors (per OS thread, as CUDA's last-error slot) -------------------------------------------
thread_local cudaError_t t_last_error = cudaSuccess;
thread_local cudaError_t t_failure = cudaSuccess;  // the last error that came with a message
thread_local std::string t_failure_message;         // kept after cudaGetLastError() clears the slot
thread_local int t_device = 0;

void set_error(cudaError_t error, std::string message) {
  t_last_error = error;
  t_failure = error;
  t_failure_message = std::move(message);
}

// ---- fibers -------------------------------------------------------------------------------------
constexpr size_t kStackBytes = 256 * 1024;  // a 32 KB parameter block by value, plus the kernel's frame
constexpr int kMaxThreadsPerBlock = 1024;

struct Fiber {
  ucontext_t context;
  char* stack = nullptr;
  bool finished = false;
  bool waiting = false;
  void* barrier = nullptr;  // the __syncthreads call site it waits at
};

struct Block {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  int current = -1;
  void (*run)(void*) = nullptr;
  void* context = nullptr;
  bool in_fiber = false;  // a thread of the block is running (not the scheduler)
  char fault[320] = {};   // why a thread was stopped; the block stops with it
};

Block g_block;
bool g_in_launch = false;
pthread_t g_launch_thread;
char* g_stack_region = nullptr;  // the fibers' stacks, each above an inaccessible guard page
size_t g_stack_stride = 0;
bool g_reverse = false;
uint64_t g_window_first = 0, g_window_last = UINT64_MAX;
std::vector<LaunchRecord> g_log;
constexpr size_t kMaxLogEntries = 100000;
std::mutex g_launch_mutex;  // one grid at a time: shared memory and the built-in variables are global

// Stacks are mapped once, with an inaccessible page below each so an overflow faults
// instead of corrupting its neighbour.
void ensure_stacks(int threads) {
  if (int(g_block.fibers.size()) >= threads) return;
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  const size_t stride = kStackBytes + page;
  void* region = mmap(nullptr, stride * kMaxThreadsPerBlock, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (region == MAP_FAILED) throw std::bad_alloc();
  g_stack_region = static_cast<char*>(region);
  g_stack_stride = stride;
  g_block.fibers.resize(kMaxThreadsPerBlock);
  for (int t = 0; t < kMaxThreadsPerBlock; ++t) {
    char* base = static_cast<char*>(region) + size_t(t) * stride;
    mprotect(base, page, PROT_NONE);
    g_block.fibers[size_t(t)].stack = base + page;
  }
}

// Stops the running thread: records why, and returns to the scheduler, which never
// resumes the thread and fails the launch (a GPU stops the whole kernel).
[[noreturn]] void stop_thread(const char* why) {
  std::snprintf(g_block.fault, sizeof(g_block.fault), "%s", why);
  g_block.in_fiber = false;
  swapcontext(&g_block.fibers[size_t(g_block.current)].context, &g_block.scheduler);
  std::abort();  // not reached
}

// SIGSEGV and SIGBUS while a thread of a kernel runs: the GPU's illegal-address error.
// Anything else goes to the handler that was there before.
struct sigaction g_previous_segv, g_previous_bus;

void on_memory_fault(int signal, siginfo_t* info, void*) {
  if (g_in_launch && g_block.in_fiber && pthread_equal(pthread_self(), g_launch_thread)) {
    const uintptr_t address = reinterpret_cast<uintptr_t>(info->si_addr);
    const uintptr_t region = reinterpret_cast<uintptr_t>(g_stack_region);
    char why[128];
    if (address >= region && address < region + g_stack_stride * kMaxThreadsPerBlock &&
        (address - region) % g_stack_stride < g_stack_stride - kStackBytes)
      std::snprintf(why, sizeof(why), "the thread overflowed its %zu KiB stack in the host executor",
                    kStackBytes / 1024);
    else
      std::snprintf(why, sizeof(why), "illegal address 0x%llx (%s)", static_cast<unsigned long long>(address),
                    signal == SIGSEGV ? "unmapped memory" : "bus error");
    stop_thread(why);  // the signal mask comes back with the scheduler's context
  }
  sigaction(signal, signal == SIGSEGV ? &g_previous_segv : &g_previous_bus, nullptr);  // the access faults again
}

// Installs on_memory_fault, on a stack of its own (a stack overflow leaves none), for one launch.
class MemoryFaults {
 public:
  MemoryFaults() {
    static char alternate[64 * 1024];
    stack_t stack{};
    stack.ss_sp = alternate;
    stack.ss_size = sizeof(alternate);
    sigaltstack(&stack, &previous_stack_);
    struct sigaction action {};
    action.sa_sigaction = on_memory_fault;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &g_previous_segv);
    sigaction(SIGBUS, &action, &g_previous_bus);
    g_launch_thread = pthread_self();
  }
  ~MemoryFaults() {
    sigaction(SIGSEGV, &g_previous_segv, nullptr);
    sigaction(SIGBUS, &g_previous_bus, nullptr);
    sigaltstack(&previous_stack_, nullptr);
  }
  MemoryFaults(const MemoryFaults&) = delete;
  MemoryFaults& operator=(const MemoryFaults&) = delete;

 private:
  stack_t previous_stack_{};
};

void fiber_main() {
  g_block.run(g_block.context);
  g_block.fibers[size_t(g_block.current)].finished = true;
  g_block.in_fiber = false;
  // returning resumes uc_link: the scheduler
}

std::string describe(const dim3& d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

uint3 thread_coordinates(int t, const dim3& block) {
  const unsigned u = unsigned(t);
  return uint3{u % block.x, u / block.x % block.y, u / (block.x * block.y)};
}

// Runs every thread of the current block to completion. Returns an empty string, or why
// the block failed.
std::string run_block(int threads) {
  g_block.fault[0] = '\0';
  ucontext_t initial;
  getcontext(&initial);
  for (int t = 0; t < threads; ++t) {
    Fiber& f = g_block.fibers[size_t(t)];
    f.context = initial;
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &g_block.scheduler;
    makecontext(&f.context, fiber_main, 0);
    f.finished = f.waiting = false;
    f.barrier = nullptr;
  }
  for (;;) {
    for (int k = 0; k < threads; ++k) {
      const int t = g_reverse ? threads - 1 - k : k;
      Fiber& f = g_block.fibers[size_t(t)];
      if (f.finished) continue;
      f.waiting = false;
      g_block.current = t;
      g_thread_index = thread_coordinates(t, g_block_dim);
      g_block.in_fiber = true;
      swapcontext(&g_block.scheduler, &f.context);
      if (g_block.fault[0] != '\0') return "thread " + describe(g_thread_index) + ": " + g_block.fault;
    }
    int finished = 0, waiting = 0;
    void* barrier = nullptr;
    bool same_barrier = true;
    for (int t = 0; t < threads; ++t) {
      const Fiber& f = g_block.fibers[size_t(t)];
      finished += f.finished;
      if (f.waiting) {
        if (waiting++ == 0) barrier = f.barrier;
        same_barrier &= f.barrier == barrier;
      }
    }
    if (finished == threads) return "";
    // The waiting fibers are abandoned: their stacks are reused by the next block.
    if (finished > 0)
      return "__syncthreads() was reached by " + std::to_string(waiting) + " threads of the block, but " +
             std::to_string(finished) + " had returned without reaching it";
    if (!same_barrier) return "threads of one block wait at different __syncthreads() calls";
  }
}

std::string configuration_problem(const LaunchConfig& config, size_t parameter_bytes, const DeviceDescription& device,
                                  cudaError_t& error) {
  const dim3 g = config.grid, b = config.block;
  error = cudaErrorInvalidConfiguration;
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 2147483647u || g.y > 65535u || g.z > 65535u)
    return "grid " + describe(g) + " is empty or too large";
  const uint64_t threads = uint64_t(b.x) * b.y * b.z;
  if (threads == 0 || threads > uint64_t(kMaxThreadsPerBlock) || b.x > 1024u || b.y > 1024u || b.z > 64u)
    return "block " + describe(b) + " is empty or too large";
  error = cudaErrorNotSupported;
  if (config.shared_bytes != 0) return "dynamic shared memory is not emulated";
  error = cudaErrorInvalidValue;
  if (parameter_bytes > device.parameter_limit)
    return "the kernel's parameters take " + std::to_string(parameter_bytes) + " bytes; device " +
           std::to_string(t_device) + " accepts " + std::to_string(device.parameter_limit);
  error = cudaSuccess;
  return "";
}

std::string demangled(const std::type_info& type) {
  int status = 0;
  char* name = abi::__cxa_demangle(type.name(), nullptr, nullptr, &status);
  std::string out = status == 0 && name != nullptr ? name : type.name();
  std::free(name);
  return out;
}

}  // namespace

const DeviceDescription* device_description(int device) {
  return device >= 0 && device < kDeviceCount ? &kDevices[device] : nullptr;
}

void execute(const LaunchConfig& config, size_t parameter_bytes, const std::type_info& parameters,
             void (*run)(void*), void* context) {
  const std::lock_guard<std::mutex> lock(g_launch_mutex);
  LaunchRecord record{t_device, {config.grid.x, config.grid.y, config.grid.z},
                      {config.block.x, config.block.y, config.block.z}, parameter_bytes, demangled(parameters), 0,
                      cudaSuccess};
  cudaError_t error = cudaSuccess;
  std::string problem = configuration_problem(config, parameter_bytes, *device_description(t_device), error);
  if (problem.empty()) {
    const int threads = int(config.block.x * config.block.y * config.block.z);
    ensure_stacks(threads);
    g_block.run = run;
    g_block.context = context;
    g_grid_dim = config.grid;
    g_block_dim = config.block;
    const uint64_t blocks = uint64_t(config.grid.x) * config.grid.y * config.grid.z;
    const MemoryFaults faults;
    g_in_launch = true;
    for (uint64_t k = 0; k < blocks && problem.empty(); ++k) {
      const uint64_t linear = g_reverse ? blocks - 1 - k : k;
      if (linear < g_window_first || linear >= g_window_last) continue;
      g_block_index = uint3{unsigned(linear % config.grid.x), unsigned(linear / config.grid.x % config.grid.y),
                            unsigned(linear / (uint64_t(config.grid.x) * config.grid.y))};
      problem = run_block(threads);
      ++record.blocks_run;
      if (!problem.empty()) {
        error = cudaErrorLaunchFailure;
        problem = "block " + describe(g_block_index) + ": " + problem;
      }
    }
    g_in_launch = false;
  }
  record.error = error;
  if (g_log.size() < kMaxLogEntries) g_log.push_back(record);
  if (error != cudaSuccess) set_error(error, "fusedopt host executor: " + problem);
}

std::vector<LaunchRecord> launch_log() {
  const std::lock_guard<std::mutex> lock(g_launch_mutex);
  return g_log;
}
void clear_launch_log() {
  const std::lock_guard<std::mutex> lock(g_launch_mutex);
  g_log.clear();
}
void set_reverse_order(bool reverse) {
  const std::lock_guard<std::mutex> lock(g_launch_mutex);
  g_reverse = reverse;
}
void set_block_window(uint64_t first, uint64_t last) {
  const std::lock_guard<std::mutex> lock(g_launch_mutex);
  g_window_first = first;
  g_window_last = last;
}

}  // namespace fusedopt::cuda_host

using namespace fusedopt::cuda_host;

const uint3& threadIdx = g_thread_index;
const uint3& blockIdx = g_block_index;
const dim3& blockDim = g_block_dim;
const dim3& gridDim = g_grid_dim;

void __syncthreads() {
  if (!g_in_launch) {
    std::fprintf(stderr, "fusedopt host executor: __syncthreads() called outside a kernel\n");
    std::abort();
  }
  Fiber& f = g_block.fibers[size_t(g_block.current)];
  f.waiting = true;
  f.barrier = __builtin_return_address(0);
  g_block.in_fiber = false;
  swapcontext(&f.context, &g_block.scheduler);
}

// ---- the runtime API -----------------------------------------------------------------------------
const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoKernelImageForDevice: return "cudaErrorNoKernelImageForDevice";
    case cudaErrorUnsupportedPtxVersion: return "cudaErrorUnsupportedPtxVersion";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    default: return "cudaErrorUnknown";
  }
}

// The message of the last failure on this thread when `error` is its code, so an op's
// exception says what went wrong; else the code's name.
const char* cudaGetErrorString(cudaError_t error) {
  if (error == t_failure && !t_failure_message.empty()) return t_failure_message.c_str();
  return cudaGetErrorName(error);
}

cudaError_t cudaPeekAtLastError() { return t_last_error; }
cudaError_t cudaGetLastError() {
  const cudaError_t error = t_last_error;
  t_last_error = cudaSuccess;
  return error;
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = kDeviceCount;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = t_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device_description(device) == nullptr) {
    set_error(cudaErrorInvalidDevice, "");
    return cudaErrorInvalidDevice;
  }
  t_device = device;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  const DeviceDescription* d = device_description(device);
  if (d == nullptr) return cudaErrorInvalidDevice;
  switch (attribute) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = 132; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = d->major; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = d->minor; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
cudaError_t cudaDriverGetVersion(int* version) {
  *version = kDriverVersion;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus* status) {
  *status = cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** pointer, size_t bytes) {
  *pointer = std::aligned_alloc(256, (bytes + 255) / 256 * 256);  // cudaMalloc's alignment
  return *pointer != nullptr || bytes == 0 ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void* pointer) {
  std::free(pointer);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* to, const void* from, size_t bytes, cudaMemcpyKind) {
  std::memmove(to, from, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* to, const void* from, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(to, from, bytes, kind);
}
cudaError_t cudaMemset(void* to, int value, size_t bytes) {
  std::memset(to, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* to, int value, size_t bytes, cudaStream_t) { return cudaMemset(to, value, bytes); }
cudaError_t cudaMallocAsync(void** pointer, size_t bytes, cudaStream_t) { return cudaMalloc(pointer, bytes); }
cudaError_t cudaFreeAsync(void* pointer, cudaStream_t) { return cudaFree(pointer); }

// ---- illegal accesses ------------------------------------------------------------------------------
// The kernels are compiled with -fsanitize=alignment,null, whose checks call this handler
// (the UBSan ABI that gcc and clang share; no sanitizer runtime is linked) on a misaligned
// or null access: where a GPU stops the kernel with a misaligned-address or illegal-address
// error, the executor stops the thread's block and fails the launch.
namespace {

struct SourceLocation {
  const char* file;
  uint32_t line, column;
};
struct TypeDescriptor {
  uint16_t kind, info;
  char name[1];
};
struct TypeMismatch {
  SourceLocation location;
  const TypeDescriptor* type;
  unsigned char log_alignment;
  unsigned char check_kind;
};

[[noreturn]] void illegal_access(const TypeMismatch* data, uintptr_t pointer) {
  static const char* const kKinds[] = {"load of", "store to", "reference binding to", "member access within",
                                       "member call on", "constructor call on", "downcast of", "downcast of",
                                       "upcast of", "cast to virtual base of", "_Nonnull binding to",
                                       "dynamic operation on"};
  const char* kind = data->check_kind < sizeof(kKinds) / sizeof(kKinds[0]) ? kKinds[data->check_kind] : "access to";
  char what[160];
  if (pointer == 0)
    std::snprintf(what, sizeof(what), "%s a null pointer of type %s", kind, data->type->name);
  else
    std::snprintf(what, sizeof(what), "%s misaligned address 0x%llx of type %s, which needs %u-byte alignment", kind,
                  static_cast<unsigned long long>(pointer), data->type->name, 1u << data->log_alignment);
  char message[320];
  std::snprintf(message, sizeof(message), "%s (%s:%u)", what, data->location.file, data->location.line);
  if (!g_in_launch || !g_block.in_fiber) {  // host code of the ops: no kernel to stop
    std::fprintf(stderr, "fusedopt host executor: %s\n", message);
    std::abort();
  }
  stop_thread(message);
}

}  // namespace

// Declared by the compiler as (void*, void*).
extern "C" {
void __ubsan_handle_type_mismatch_v1(void* data, void* pointer) {
  illegal_access(static_cast<const TypeMismatch*>(data), reinterpret_cast<uintptr_t>(pointer));
}
void __ubsan_handle_type_mismatch_v1_abort(void* data, void* pointer) {
  illegal_access(static_cast<const TypeMismatch*>(data), reinterpret_cast<uintptr_t>(pointer));
}
}
