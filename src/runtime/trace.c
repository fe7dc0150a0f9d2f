// Timelines as Chrome trace-event JSON (chrome://tracing, Perfetto): one track per rank with
// every instruction (kernels, collectives, optimizer work) and the idle gaps between them.

#include "runtime/runner.h"

#include "core/core.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>

static const char *category(const loom_runner *r, const loom_instr *in) {
    if (in->kind == LOOM_INSTR_DP_SYNC || in->kind == LOOM_INSTR_TIED_SYNC) return "comm";
    if (in->kind == LOOM_INSTR_SEND || in->kind == LOOM_INSTR_RECV) return "p2p";
    if (in->node < 0) return "step";
    const loom_node *n = &r->prog->graph->nodes[in->node];
    if (loom__op_def(n->op)->flags & LOOM_OPF_COMM) return "comm";
    return in->kind == LOOM_INSTR_BACKWARD ? "backward"
           : n->recompute_group >= 0      ? "recompute"
                                          : "forward";
}

// Instructions that belong to one micro-batch (the others act on the whole step).
static int per_micro(loom_instr_kind kind) {
    return kind == LOOM_INSTR_LOAD_BATCH || kind == LOOM_INSTR_SEED_GRAD ||
           kind == LOOM_INSTR_RECORD_LOSS || kind == LOOM_INSTR_FORWARD ||
           kind == LOOM_INSTR_BACKWARD || kind == LOOM_INSTR_SEND || kind == LOOM_INSTR_RECV;
}

static json_t *event(const char *name, const char *cat, int rank, double start, double end,
                     double origin) {
    return json_pack("{s:s, s:s, s:s, s:f, s:f, s:i, s:i}", "name", name, "cat", cat, "ph", "X",
                     "ts", (start - origin) * 1e6, "dur", (end - start) * 1e6, "pid", 0, "tid",
                     rank);
}

loom_status loom__trace_write(const char *path, loom_runner *const *runners, const int *ranks,
                              int n) {
    double origin = -1;
    for (int k = 0; k < n; k++)
        if (runners[k]->n_events && (origin < 0 || runners[k]->events[0].start < origin))
            origin = runners[k]->events[0].start;
    json_t *events = json_array();
    json_t *root = events ? json_pack("{s:o, s:s}", "traceEvents", events, "displayTimeUnit", "ms")
                          : NULL;  // owns events from here
    loom_status st = LOOM_OK;
    if (!root) goto nomem;
    for (int k = 0; k < n; k++) {
        const loom_runner *r = runners[k];
        char label[32];
        snprintf(label, sizeof label, "rank %d", ranks[k]);
        json_array_append_new(events, json_pack("{s:s, s:s, s:i, s:i, s:{s:s}}", "name",
                                                "thread_name", "ph", "M", "pid", 0, "tid",
                                                ranks[k], "args", "name", label));
        for (int e = 0; e < r->n_events; e++) {
            const loom_trace_event *ev = &r->events[e];
            const loom_instr *in = &r->prog->instr[ev->instr];
            const loom_graph *g = r->prog->graph;
            char name[320];
            if (in->node >= 0)
                snprintf(name, sizeof name, "%s%s @%s", loom__op_def(g->nodes[in->node].op)->signature,
                         in->kind == LOOM_INSTR_BACKWARD ? ".backward" : "",
                         g->modules[g->nodes[in->node].module]);
            else if (in->kind == LOOM_INSTR_SEND || in->kind == LOOM_INSTR_RECV)
                snprintf(name, sizeof name, "%s %s %s pipeline rank %d", loom__instr_name(in->kind),
                         g->values[in->value].name, in->kind == LOOM_INSTR_SEND ? "to" : "from",
                         in->peer);
            else
                snprintf(name, sizeof name, "%s", loom__instr_name(in->kind));
            if (e > 0 && ev->start > r->events[e - 1].end + 1e-6)  // gaps of a microsecond or more
                json_array_append_new(events, event("idle", "idle", ranks[k],
                                                    r->events[e - 1].end, ev->start, origin));
            json_t *j = event(name, category(r, in), ranks[k], ev->start, ev->end, origin);
            // Which micro-batch: the schedule (1F1B, GPipe) reads off the timeline.
            if (j && r->prog->micro_batches > 1 && per_micro(in->kind))
                json_object_set_new(j, "args", json_pack("{s:i}", "micro", in->arg));
            if (!j || json_array_append_new(events, j) < 0) goto nomem;
        }
    }
    if (json_dump_file(root, path, JSON_COMPACT) != 0)
        st = loom__error(LOOM_ERR_IO, "%s: cannot write the trace (%s)", path, strerror(errno));
    json_decref(root);
    return st;
nomem:
    json_decref(root);
    return loom__error(LOOM_ERR_NOMEM, "out of memory writing the trace %s", path);
}
