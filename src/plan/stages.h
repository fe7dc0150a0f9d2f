// Pipeline stages: which contiguous run of a graph's forward nodes each (virtual) stage holds.

#ifndef LOOM_PLAN_STAGES_H
#define LOOM_PLAN_STAGES_H

#include "ir/ir.h"

typedef struct loom_stage_options {
    int nstages;         // stages to make (pipeline ranks x chunks), >= 1
    const char *pivots;  // NULL or "mod1,mod2": a stage may start only where a module matching
                         // one of these begins ("layers": every numbered layer)
    const char *layers;  // NULL or "l0,l1,...": numbered layers per stage, -1 shares the rest
                         // evenly; exactly nstages entries
    const double *cost;  // NULL, or per node its measured cost (runtime/runner.h: loom__measure_costs) to balance
                         // instead of FLOPs
} loom_stage_options;


// stage_of[i] (for every forward node i of g; backward nodes get -1) in [0, nstages),
// non-decreasing in node order. The nodes before the first numbered layer (embeddings) go to
// stage 0 and those after the last (final norm, head, loss) to the last stage. Without
// `layers`, the cut points (pivot boundaries, or every layer boundary) are chosen to balance
// the stages' forward+backward FLOPs. Errors name the option and the fix: an empty stage,
// a layer list that does not add up, pivots that match no module or too few to cut nstages.
loom_status loom__stages_assign(const loom_graph *g, const loom_stage_options *o,
                                int32_t *stage_of);

#endif // LOOM_PLAN_STAGES_H
