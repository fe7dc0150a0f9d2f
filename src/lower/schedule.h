// Pipeline schedules: the order of forward and backward passes each pipeline rank runs.
//
// A unit's model is cut into ranks x chunks virtual stages; chunk c of pipeline rank r is
// virtual stage c * ranks + r (Megatron's interleaving; chunks = 1 is the plain pipeline).
// Every (virtual stage, micro-batch) pair has one forward and, when training, one backward.
// Point-to-point sends are eager (they never block), so a schedule is valid when its
// dependencies (forward of stage s-1 before forward of stage s, backward of stage s+1 before
// backward of stage s, forward before backward) admit an order: the schedules below do.

#ifndef LOOM_LOWER_SCHEDULE_H
#define LOOM_LOWER_SCHEDULE_H

#include "loom/parallel.h"

#include <stdint.h>

typedef struct loom_pipe_action {
    uint8_t backward;  // 0 forward, 1 backward
    int16_t chunk;     // model chunk of this rank (virtual stage chunk * ranks + rank)
    int32_t micro;     // micro-batch
} loom_pipe_action;

// The actions pipeline rank `rank` of `ranks` runs in one step, in order (*out is malloc'ed,
// the caller frees it with loom__free). Errors (LOOM_ERR_INVALID, naming the setting and the
// fix): chunks > 1 with 1f1b (use 1f1b_interleaved), 1f1b_interleaved with chunks < 2 or with
// micros not a multiple of ranks, non-positive counts.
loom_status loom__schedule_actions(loom_schedule kind, int ranks, int chunks, int micros,
                                   int rank, loom_pipe_action **out, int *n);

// The micro-batches' activations a rank holds at most at once under the schedule (forwards
// done whose backward is not): for the memory model and the tests.
int loom__schedule_max_in_flight(const loom_pipe_action *a, int n);

#endif // LOOM_LOWER_SCHEDULE_H
