// Op costs from a device description: the roofline time of one op on its (local) shapes.

#ifndef LOOM_COST_OP_COST_H
#define LOOM_COST_OP_COST_H

#include "ir/ir.h"
#include "loom/device.h"

// Seconds of node n (its forward, or its backward when `backward`) on `spec`: the larger of its
// FLOPs at the device's rate (matrix products at the matmul rate of `dtype`, the rest at the
// f32 peak) and the bytes it reads and writes at the memory bandwidth (a backward reads the
// output gradients and the saved tensors the op table lists and writes the input gradients);
// fp32 values count at the element size of `dtype` (16-bit: mixed precision halves traffic).
double loom__op_seconds_roofline(const loom_device_spec *spec, const loom_graph *g,
                                 const loom_node *n, bool backward, loom_dtype dtype);

#endif // LOOM_COST_OP_COST_H
