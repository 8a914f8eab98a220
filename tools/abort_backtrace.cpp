// A native stack at abort, for machines without gdb: preload it (LD_PRELOAD=abort_backtrace.so)
// and a process that aborts (std::terminate, a failed assert, abort()) first prints its C/C++
// frames to stderr. Python's faulthandler shows only Python frames, and found none when the
// cluster smoke test died at exit with "terminate called without an active exception"
// (tools/gpu_check.sh, stage cluster_backtrace).
//   g++ -O1 -g -shared -fPIC tools/abort_backtrace.cpp -o abort_backtrace.so -ldl
#include <execinfo.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>

namespace {

void print_stack(int signal_number) {
  static const char kHeader[] = "\n[abort_backtrace] native stack at the signal:\n";
  (void)!write(STDERR_FILENO, kHeader, sizeof(kHeader) - 1);
  void* frames[128];
  const int count = backtrace(frames, 128);
  backtrace_symbols_fd(frames, count, STDERR_FILENO);
  // Die of the same signal, as the process would have.
  signal(signal_number, SIG_DFL);
  raise(signal_number);
}

// Installed before main (and before Python's faulthandler, which calls the handler it replaced
// after printing its own report).
__attribute__((constructor)) void install() {
  void* warm[1];
  backtrace(warm, 1);  // loads libgcc's unwinder now, not inside the signal handler
  struct sigaction action;
  std::memset(&action, 0, sizeof(action));
  action.sa_handler = print_stack;
  sigemptyset(&action.sa_mask);
  sigaction(SIGABRT, &action, nullptr);
  sigaction(SIGSEGV, &action, nullptr);
}

}  // namespace
