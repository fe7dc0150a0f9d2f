// The roofline op-cost model: time = max(FLOPs / rate, bytes / memory bandwidth) on local shapes.

#include "cost/op-cost.h"

// Bytes of value v with its fp32 elements stored as `dtype` (16-bit under mixed precision).
static double value_bytes(const loom_graph *g, loom_value v, loom_dtype dtype) {
    double b = (double)loom__value_bytes(g, v);
    return g->values[v].dtype == LOOM_DTYPE_F32 ? b * (double)loom_dtype_size(dtype) / 4 : b;
}

static double op_bytes(const loom_graph *g, const loom_node *n, bool backward, loom_dtype dtype) {
    const loom_op_def *def = loom__op_def(n->op);
    double bytes = 0;
    for (int k = 0; k < n->n_in; k++) {
        double b = value_bytes(g, n->in[k], dtype);
        if (!backward) bytes += b;
        else bytes += (def->bwd_needs_in >> k & 1 ? b : 0) + (def->grad_inputs >> k & 1 ? b : 0);
    }
    for (int o = 0; o < n->n_out; o++) {
        double b = value_bytes(g, n->out[o], dtype);
        bytes += !backward ? b : b + (def->bwd_needs_out >> o & 1 ? b : 0);
    }
    return bytes;
}

double loom__op_seconds_roofline(const loom_device_spec *spec, const loom_graph *g,
                                 const loom_node *n, bool backward, loom_dtype dtype) {
    const loom_op_def *def = loom__op_def(n->op);
    if (def->flags & LOOM_OPF_COMM) return 0;  // collectives: the collective model
    double rate = def->flags & LOOM_OPF_MATMUL ? loom_device_spec_matmul_rate(spec, dtype)
                                               : spec->peak_flops_f32;
    if (!(rate > 0)) rate = spec->peak_flops_f32 > 0 ? spec->peak_flops_f32 : 1;
    double compute = loom__op_flops(g, n, backward) / rate;
    double bandwidth = spec->memory_bandwidth;
    double memory = bandwidth > 0 ? op_bytes(g, n, backward, dtype) / bandwidth : 0;
    return compute > memory ? compute : memory;
}
