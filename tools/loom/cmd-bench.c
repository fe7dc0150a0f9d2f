// loom bench: measurements of this machine. `loom bench devices` measures SGEMM, memory and
// `local` collective rates, prints them, and writes the "cpu" device spec the planner reads.

#include "cli.h"

#include "io/fileio.h"
#include "loom/device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *bench_usage = "loom bench devices [--quick] [--out FILE] [--threads N]";

static void print_progress(const char *line, void *user) {
    (void)user;
    fprintf(stderr, "  %s\n", line);
    fflush(stderr);
}

// mkdir -p of the directory part of `path`.
static int make_parent_dirs(const char *path) {
    char *dir = loom__path_dirname(path);
    int rc = dir && loom__mkdirs(dir) == 0 ? 0 : -1;
    free(dir);
    return rc;
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static void print_table(const loom_device_measurement *m, const loom_device_spec *s) {
    printf("this machine: %s, %d cores, %.1f GiB (measured in %.1f s)\n\n",
           m->cpu_model[0] ? m->cpu_model : "unknown CPU", m->cores,
           (double)m->ram_bytes / (1 << 30), m->seconds);
    char all[32];
    snprintf(all, sizeof all, "%d thread%s", m->threads, m->threads == 1 ? "" : "s");
    printf("%-30s %15s %15s\n", "sgemm (fp32, OpenBLAS)", "1 thread", all);
    for (int i = 0; i < m->n_sgemm; i++) {
        char label[64];
        snprintf(label, sizeof label, "  %d x %d x %d", m->sgemm[i].n, m->sgemm[i].n,
                 m->sgemm[i].n);
        printf("%-30s %7.1f GFLOP/s %7.1f GFLOP/s\n", label, m->sgemm[i].flops_one * 1e-9,
               m->sgemm[i].flops_all * 1e-9);
    }
    char label[64];
    snprintf(label, sizeof label, "memory (triad, 3 x %zu MB)", m->triad_bytes / 3 >> 20);
    printf("%-30s %9.1f GB/s %9.1f GB/s\n\n", label, m->triad_one * 1e-9, m->triad_all * 1e-9);

    printf("local collectives (fp32)  ranks  alpha/step   bandwidth   small call   large call\n");
    for (int i = 0; i < m->n_comm; i++) {
        const loom_device_comm_result *c = &m->comm[i];
        printf("  all-reduce %5zu B..%3zu MB %4d %9.2f us %6.2f GB/s %9.1f us %9.2f ms\n",
               c->small_bytes, c->large_bytes >> 20, c->ranks, c->all_reduce.latency * 1e6,
               c->all_reduce.bandwidth * 1e-9, c->all_reduce_small_s * 1e6,
               c->all_reduce_large_s * 1e3);
        printf("  all-gather %5zu B..%3zu MB %4d %9.2f us %6.2f GB/s %9.1f us %9.2f ms\n",
               c->small_bytes, c->large_bytes >> 20, c->ranks, c->all_gather.latency * 1e6,
               c->all_gather.bandwidth * 1e-9, c->all_gather_small_s * 1e6,
               c->all_gather_large_s * 1e3);
    }
    printf("\nspec '%s' (one device = one core of this machine)\n", s->name);
    printf("  peak_flops_f32     %10.1f GFLOP/s\n", s->peak_flops_f32 * 1e-9);
    printf("  memory_bytes       %10.1f GiB\n", (double)s->memory_bytes / (1 << 30));
    printf("  memory_bandwidth   %10.1f GB/s\n", s->memory_bandwidth * 1e-9);
    printf("  devices_per_node   %10d\n", s->devices_per_node);
    printf("  intra_node         %10.2f GB/s, %.2f us\n", s->intra_node.bandwidth * 1e-9,
           s->intra_node.latency * 1e6);
}

static int bench_devices(int argc, char **argv) {
    cli_ctx c = {"bench devices", bench_usage};
    static const struct option opts[] = {
        {"quick", no_argument, 0, 0}, {"out", required_argument, 0, 0},
        {"threads", required_argument, 0, 0}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    loom_device_measure_config mc = loom_device_measure_config_default();
    const char *out = NULL, *name, *arg;
    while ((name = cli_next_option(&c, argc, argv, opts, &arg))) {
        if (!strcmp(name, "help")) {
            printf("usage: %s\n\n"
                   "Measures this machine: OpenBLAS SGEMM on square sizes (one thread and all),\n"
                   "memory bandwidth (a STREAM-style triad), and the latency and bandwidth of\n"
                   "the local communicator's all-reduce and all-gather (2 ranks, and one rank\n"
                   "per core when there are more cores). Prints a table and writes the \"cpu\"\n"
                   "device spec (JSON, docs/devices.md) that the planner reads.\n\n"
                   "  --quick          small sizes, a second or two (for tests)\n"
                   "  --out FILE       where to write the spec (default:\n"
                   "                   $XDG_CACHE_HOME/loom/devices/cpu.json, or\n"
                   "                   ~/.cache/loom/devices/cpu.json)\n"
                   "  --threads N      threads for the all-thread rates (default: all cores)\n",
                   bench_usage);
            return 0;
        }
        if (!strcmp(name, "quick")) mc.quick = 1;
        else if (!strcmp(name, "out")) out = arg;
        else if (!strcmp(name, "threads")) mc.threads = cli_int(&c, name, arg, 1, 4096);
    }
    if (out && !*out) cli_usage_error(&c, "--out: empty path");

    char path[4096];
    if (out) {
        snprintf(path, sizeof path, "%s", out);
        char *dir = loom__path_dirname(path);
        int ok = dir && is_dir(dir);
        if (!ok)
            fprintf(stderr, "loom bench devices: --out %s: directory '%s' does not exist\n", out,
                    dir ? dir : "?");
        free(dir);
        if (!ok) return 1;
    } else {
        if (loom_device_spec_cache_path("cpu", path, sizeof path) < 0)
            return cli_fail("bench devices", "finding the cache directory (give --out FILE)");
        if (make_parent_dirs(path) < 0)
            return cli_fail("bench devices", "creating the cache directory");
    }

    fprintf(stderr, "measuring this machine%s...\n", mc.quick ? " (quick)" : "");
    mc.progress = print_progress;
    loom_device_spec spec;
    loom_device_measurement m;
    if (loom_device_measure(&mc, &spec, &m) < 0) return cli_fail("bench devices", "measuring");
    print_table(&m, &spec);
    fflush(stdout);
    if (loom_device_spec_save(path, &spec) < 0)
        return cli_fail("bench devices", "writing the spec");
    fprintf(stderr, "wrote %s\n", path);
    return 0;
}

int cmd_bench(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "devices")) return bench_devices(argc - 1, argv + 1);
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: %s\n\nloom bench devices    measure this machine and write its device "
               "spec\n", bench_usage);
        return 0;
    }
    if (argc < 2) fprintf(stderr, "loom bench: which benchmark? (the one there is: devices)\n");
    else fprintf(stderr, "loom bench: unknown benchmark '%s' (the one there is: devices)\n",
                 argv[1]);
    fprintf(stderr, "usage: %s\nRun 'loom bench devices --help' for details.\n", bench_usage);
    return CLI_EXIT_USAGE;
}
