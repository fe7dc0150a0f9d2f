// Pipeline step time for the cost model: each rank's schedule replayed in continuous time
// over per-stage forward and backward durations and a point-to-point transfer time.

#ifndef LOOM_COST_PIPE_TIME_H
#define LOOM_COST_PIPE_TIME_H

#include "loom/parallel.h"

typedef struct loom_pipe_timing {
    double makespan;    // seconds from the first forward's start (time 0) to the last pass's end
    double busy_max;    // the largest sum of pass durations on one rank
    int in_flight_max;  // the most activations any rank holds (loom__schedule_max_in_flight)
    int *in_flight;     // set by the caller: NULL, or `ranks` ints filled with each rank's count
} loom_pipe_timing;

// Simulated time of one pipeline step. Each rank runs its loom__schedule_actions in order; a
// pass starts once the rank is free and the passes it depends on have ended, plus p2p_s when
// they ran on another rank: the forward of virtual stage s (chunk * ranks + rank) on a
// micro-batch needs the forward of stage s-1 on it; its backward needs its own forward and the
// backward of stage s+1 (the last stage's backward only its forward). forward_s and
// backward_s hold one micro-batch's seconds per virtual stage (ranks * chunks entries).
// train = 0 runs forwards only and takes kind infer_pipe (backward_s may be NULL then);
// train = 1 takes a training schedule. Only out->in_flight is read. Errors: LOOM_ERR_INVALID
// naming the setting (and those of loom__schedule_actions), LOOM_ERR_NOMEM, LOOM_ERR_INTERNAL
// when the ranks' orders deadlock (no valid schedule does).
loom_status loom__pipe_simulate(loom_schedule kind, int ranks, int chunks, int micros,
                                const double *forward_s, const double *backward_s, double p2p_s,
                                int train, loom_pipe_timing *out);

#endif // LOOM_COST_PIPE_TIME_H
