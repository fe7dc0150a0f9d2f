// The collective model: ring collectives as latency steps plus bytes over a link's bandwidth
// (reference/cost-models.md), for the planner's cost model and the fit of measured links.

#include "loom/device.h"

void loom_collective_ring(loom_collective kind, int ranks, double *steps, double *volume) {
    double n = ranks > 1 ? ranks : 1, frac = (n - 1) / n;
    switch (kind) {
    case LOOM_COLLECTIVE_ALL_REDUCE:  // reduce-scatter then all-gather
        *steps = 2 * (n - 1), *volume = 2 * frac;
        break;
    case LOOM_COLLECTIVE_REDUCE_SCATTER:
    case LOOM_COLLECTIVE_ALL_GATHER:
    case LOOM_COLLECTIVE_ALL_TO_ALL:
        *steps = n - 1, *volume = frac;
        break;
    case LOOM_COLLECTIVE_BROADCAST:
    case LOOM_COLLECTIVE_SEND_RECV:
    default:
        *steps = ranks > 1 ? 1 : 0, *volume = ranks > 1 ? 1 : 0;
        break;
    }
}

double loom_collective_seconds(const loom_device_link *link, loom_collective kind, double bytes,
                               int ranks) {
    if (ranks <= 1) return 0;
    if (!link || !(link->bandwidth > 0)) return 1e30;  // no such link: never the choice
    double steps, volume;
    loom_collective_ring(kind, ranks, &steps, &volume);
    return steps * link->latency + volume * bytes / link->bandwidth;
}

double loom_device_collective_seconds(const loom_device_spec *spec, loom_collective kind,
                                      double bytes, int ranks) {
    const loom_device_link *link = ranks <= spec->devices_per_node ? &spec->intra_node
                                                                    : &spec->inter_node;
    return loom_collective_seconds(link, kind, bytes, ranks);
}
