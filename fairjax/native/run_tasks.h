// Tasks 0 .. n - 1 run on the calling thread and XLA's intra-op pool.
//
// RunTasks(pool, n, task) calls task(t) once for every t in [0, n): the
// caller and up to pool.num_threads() - 1 helpers take tasks from a shared
// counter until none is left, so the caller never waits on a helper that
// has not started (a helper scheduled late finds no task and returns). It
// returns when every task has finished. Each participant flushes denormals
// to zero while it works, as XLA's CPU code does (flush_denormals.h). The
// order in which tasks finish varies; a kernel that must not depend on it
// writes each task's result to its own place.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "flush_denormals.h"

namespace fairjax_native {

template <typename Pool, typename Task>
void RunTasks(Pool& pool, int64_t n, const Task& task) {
  // Shared with the helpers, which may start after this call returns.
  struct Counters {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto counters = std::make_shared<Counters>();
  const Task* body = &task;  // used only while tasks remain, i.e. before
                             // this call returns
  auto work = [counters, body, n] {
    ScopedFlushDenormals flush;
    for (int64_t t; (t = counters->next.fetch_add(1)) < n;) {
      (*body)(t);
      counters->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule(decltype(work)(work));
  work();
  while (counters->done.load(std::memory_order_acquire) < n) {
    std::this_thread::yield();
  }
}

}  // namespace fairjax_native
