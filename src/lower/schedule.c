// Pipeline schedules: the per-rank order of forward and backward passes (gpipe, 1f1b,
// Megatron's interleaved 1f1b, forward-only inference) and the activations each one holds.

#include "lower/schedule.h"

#include "core/core.h"

#include <stdint.h>
#include <string.h>

static const char *const schedule_names[] = {"1f1b", "gpipe", "1f1b_interleaved", "infer_pipe"};

const char *loom_schedule_name(loom_schedule s) {
    return (unsigned)s < LOOM_SCHEDULE_COUNT ? schedule_names[s] : "?";
}

int loom_schedule_from_name(const char *name) {
    if (!name) return -1;
    for (int i = 0; i < LOOM_SCHEDULE_COUNT; i++)
        if (!strcmp(name, schedule_names[i])) return i;
    return -1;
}

static loom_pipe_action fwd(int chunk, int micro) {
    return (loom_pipe_action){0, (int16_t)chunk, (int32_t)micro};
}
static loom_pipe_action bwd(int chunk, int micro) {
    return (loom_pipe_action){1, (int16_t)chunk, (int32_t)micro};
}

// Megatron's interleaved order walks the micro-batches in groups of `ranks`: the k-th forward
// runs chunk (k / ranks) % chunks on micro-batch (k / (ranks * chunks)) * ranks + k % ranks,
// so a group of `ranks` micro-batches passes through chunk 0, then chunk 1, ...; by the time
// rank 0 comes back for chunk c + 1 of micro-batch m, the last rank has finished chunk c of
// it. Backwards walk the same groups with the chunks reversed.
static int interleaved_micro(int k, int ranks, int chunks) {
    return (k / (ranks * chunks)) * ranks + k % ranks;
}

loom_status loom__schedule_actions(loom_schedule kind, int ranks, int chunks, int micros,
                                   int rank, loom_pipe_action **out, int *n) {
    *out = NULL;
    *n = 0;
    if ((unsigned)kind >= LOOM_SCHEDULE_COUNT)
        return loom__error(LOOM_ERR_INVALID, "pipeline_scheduler %d is not a schedule: use 1f1b, "
                           "gpipe, 1f1b_interleaved or infer_pipe", (int)kind);
    if (ranks < 1)
        return loom__error(LOOM_ERR_INVALID, "pipeline_nstages %d: a pipeline needs at least 1 "
                           "stage", ranks);
    if (chunks < 1)
        return loom__error(LOOM_ERR_INVALID, "pipeline_nchunks %d: each pipeline rank needs at "
                           "least 1 model chunk", chunks);
    if (micros < 1)
        return loom__error(LOOM_ERR_INVALID, "pipeline_nmicros %d: a batch splits into at least "
                           "1 micro-batch", micros);
    if (rank < 0 || rank >= ranks)
        return loom__error(LOOM_ERR_INVALID, "pipeline rank %d out of range: pipeline_nstages is "
                           "%d (ranks 0..%d)", rank, ranks, ranks - 1);
    // The action fields are int16 chunks and int32 micro-batches, and the count is an int.
    if (chunks > INT16_MAX || (int64_t)ranks * chunks > INT32_MAX ||
        2 * (int64_t)micros * chunks > INT32_MAX)
        return loom__error(LOOM_ERR_INVALID, "pipeline_nchunks %d x pipeline_nmicros %d is too "
                           "large: use fewer chunks or micro-batches", chunks, micros);
    if (kind == LOOM_SCHEDULE_1F1B && chunks > 1)
        return loom__error(LOOM_ERR_INVALID, "pipeline_nchunks %d with schedule 1f1b: 1f1b runs "
                           "one chunk per rank; use 1f1b_interleaved for %d chunks, or set "
                           "pipeline_nchunks to 1", chunks, chunks);
    if (kind == LOOM_SCHEDULE_1F1B_INTERLEAVED) {
        if (chunks < 2)
            return loom__error(LOOM_ERR_INVALID, "pipeline_nchunks %d with schedule "
                               "1f1b_interleaved: interleaving needs at least 2 chunks per rank; "
                               "set pipeline_nchunks to 2 or more, or use 1f1b", chunks);
        // The interleaved order cycles through the chunks in groups of `ranks` micro-batches
        // (see interleaved_micro); a partial last group would leave the order undefined.
        if (micros % ranks) {
            int lo = micros / ranks * ranks;
            if (!lo)
                return loom__error(LOOM_ERR_INVALID, "pipeline_nmicros %d with schedule "
                                   "1f1b_interleaved must be a multiple of pipeline_nstages %d: "
                                   "use %d micro-batches (or a multiple)", micros, ranks, ranks);
            return loom__error(LOOM_ERR_INVALID, "pipeline_nmicros %d with schedule "
                               "1f1b_interleaved must be a multiple of pipeline_nstages %d: use "
                               "%d or %d micro-batches", micros, ranks, lo, lo + ranks);
        }
    }

    int nf = micros * chunks;
    int total = kind == LOOM_SCHEDULE_INFER_PIPE ? nf : 2 * nf;
    loom_pipe_action *a = loom__malloc((size_t)total * sizeof *a);
    if (!a) return LOOM_ERR_NOMEM;
    int k = 0;

    switch (kind) {
    case LOOM_SCHEDULE_GPIPE:
    case LOOM_SCHEDULE_INFER_PIPE:
        // Chunk-major: every micro-batch through chunk c before chunk c + 1, so the last rank's
        // chunk c outputs arrive at rank 0 while it works through the rest of chunk c.
        for (int c = 0; c < chunks; c++)
            for (int m = 0; m < micros; m++) a[k++] = fwd(c, m);
        if (kind == LOOM_SCHEDULE_GPIPE)
            // Gradients flow from the last virtual stage back: the last chunk first.
            for (int c = chunks - 1; c >= 0; c--)
                for (int m = 0; m < micros; m++) a[k++] = bwd(c, m);
        break;
    case LOOM_SCHEDULE_1F1B: {
        // Rank r runs ranks - r - 1 forwards before its first backward can arrive (the last
        // rank none), then alternates so it never holds more than ranks - r activations.
        int w = ranks - rank - 1 < micros ? ranks - rank - 1 : micros;
        for (int m = 0; m < w; m++) a[k++] = fwd(0, m);
        for (int i = 0; i < micros - w; i++) {
            a[k++] = fwd(0, w + i);
            a[k++] = bwd(0, i);
        }
        for (int m = micros - w; m < micros; m++) a[k++] = bwd(0, m);
        break;
    }
    case LOOM_SCHEDULE_1F1B_INTERLEAVED: {
        // Megatron's warm-up: every rank first fills chunks 0..chunks-2 for one group
        // ((chunks - 1) * ranks forwards), so the first backward (last chunk) has its forward
        // already done, plus 2 per rank after it: a forward and a gradient in flight per hop,
        // the slack Megatron's paired send/receive steps need. With eager sends 1 per rank
        // reaches the same makespan in the unit-time model of tests/test-schedule.c, holding
        // one activation less per later rank; we keep Megatron's count so the order matches
        // its schedule. Megatron also runs every forward first when micros == ranks; eager
        // sends don't need that, and the formula below reaches the same makespan holding less.
        int64_t w64 = (int64_t)(ranks - rank - 1) * 2 + (int64_t)(chunks - 1) * ranks;
        int w = w64 < nf ? (int)w64 : nf;
        for (int f = 0; f < w; f++)
            a[k++] = fwd((f / ranks) % chunks, interleaved_micro(f, ranks, chunks));
        for (int i = 0; i < nf - w; i++) {
            int f = w + i;
            a[k++] = fwd((f / ranks) % chunks, interleaved_micro(f, ranks, chunks));
            a[k++] = bwd(chunks - 1 - (i / ranks) % chunks, interleaved_micro(i, ranks, chunks));
        }
        for (int b = nf - w; b < nf; b++)
            a[k++] = bwd(chunks - 1 - (b / ranks) % chunks, interleaved_micro(b, ranks, chunks));
        break;
    }
    default:
        break;
    }
    LOOM_ASSERT(k == total);
    *out = a;
    *n = total;
    return LOOM_OK;
}

int loom__schedule_max_in_flight(const loom_pipe_action *a, int n) {
    // Each (chunk, micro-batch) forward keeps its activations until its backward frees them.
    int held = 0, max = 0;
    for (int i = 0; i < n; i++) {
        held += a[i].backward ? -1 : 1;
        if (held > max) max = held;
    }
    return max;
}
