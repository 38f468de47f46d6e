/*
 * fake_nvml.c - a stand-in libnvidia-ml.so.1 for agentkit's tests.
 *
 * There is no GPU on the test machines. The tests build this file into a
 * directory as libnvidia-ml.so.1 and put that directory first in
 * LD_LIBRARY_PATH, so that NVIDIA's own pynvml (package nvidia-ml-py), which
 * loads the library with CDLL("libnvidia-ml.so.1"), and the router's GPU
 * sampler run unchanged against it.
 *
 * Build: gcc -shared -fPIC -O2 -Wall -Wextra -o libnvidia-ml.so.1 fake_nvml.c
 *
 * State file
 * ----------
 * The answers come from a text file whose path is in the environment variable
 * AGENTKIT_FAKE_NVML_STATE. It is read again on every query (device count,
 * handle, name, memory), so a test changes what the "GPUs" report by replacing
 * the file atomically (write a temporary file, then rename it over this one).
 *
 *   - One line per device, in NVML index order:
 *
 *         NAME TOTAL_MIB FREE_MIB
 *
 *     NAME has no spaces (at most 95 bytes); TOTAL_MIB and FREE_MIB are
 *     decimal mebibytes with FREE_MIB <= TOTAL_MIB. Blank lines are ignored.
 *     At most 16 devices. An empty file means zero devices.
 *
 *         NVIDIA_A100-SXM4-80GB 81920 40960
 *         NVIDIA_L4 23034 23034
 *
 *   - Lines "proc INDEX PID USED_MIB" (anywhere in the file): a process using
 *     USED_MIB mebibytes on device INDEX, as nvmlDeviceGetComputeRunningProcesses
 *     reports it (at most 64 in all):
 *
 *         proc 0 4242 6144
 *
 *   - A single line "error CODE": every query (not nvmlInit, not nvmlShutdown)
 *     returns that NVML return code, e.g. "error 15" (NVML_ERROR_GPU_IS_LOST).
 *
 *   - The file missing (or the variable unset): nvmlInit* returns
 *     NVML_ERROR_DRIVER_NOT_LOADED (9), as on a host without the kernel driver.
 *     Removed after a successful init, queries return that code too.
 *
 *   - A file that does not parse: queries return NVML_ERROR_UNKNOWN (999).
 *
 * Like the real library, init and shutdown are reference counted, and queries
 * before nvmlInit (or after the last nvmlShutdown) return
 * NVML_ERROR_UNINITIALIZED. Nothing else is shared between calls, so calls
 * from several threads at once are safe.
 *
 * Exported symbols (those pynvml resolves for the calls the router makes,
 * plus the older unversioned and _v2 variants):
 *   nvmlInit nvmlInit_v2 nvmlInitWithFlags nvmlShutdown nvmlErrorString
 *   nvmlSystemGetDriverVersion
 *   nvmlDeviceGetCount nvmlDeviceGetCount_v2
 *   nvmlDeviceGetHandleByIndex nvmlDeviceGetHandleByIndex_v2
 *   nvmlDeviceGetName nvmlDeviceGetMemoryInfo nvmlDeviceGetMemoryInfo_v2
 *   nvmlDeviceGetComputeRunningProcesses_v3 (the status service's per-agent figures)
 * (the last one not with -DFAKE_NVML_WITHOUT_MEMORY_INFO_V2, which builds a
 * library like the drivers before 510, for the sampler's fallback).
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

#define MAX_DEVICES 16
#define MAX_PROCESSES 64
#define NAME_MAX_LEN 95
#define DRIVER_VERSION "999.99.99-agentkit-fake"

/* The layouts of nvml.h. */
typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

#define NVML_STRUCT_VERSION(size, ver) ((unsigned int)(size) | ((unsigned int)(ver) << 24U))
#define nvmlMemory_v2 NVML_STRUCT_VERSION(sizeof(nvmlMemory_v2_t), 2)

/* nvmlDevice_t is an opaque pointer: here, the address of one of these slots. */
struct nvmlDevice_st {
    char unused;
};
typedef struct nvmlDevice_st *nvmlDevice_t;
static struct nvmlDevice_st slots[MAX_DEVICES];

struct device {
    char name[NAME_MAX_LEN + 1];
    unsigned long long total_mib;
    unsigned long long free_mib;
};

struct process {
    unsigned index;
    unsigned pid;
    unsigned long long used_mib;
};

struct state {
    unsigned count;
    struct device devices[MAX_DEVICES];
    unsigned nprocs;
    struct process procs[MAX_PROCESSES];
};

/* nvml.h's nvmlProcessInfo_v2_t, which the _v3 call fills. */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_v2_t;

static int init_count;

static const char *state_path(void)
{
    const char *path = getenv("AGENTKIT_FAKE_NVML_STATE");
    return (path != NULL && path[0] != '\0') ? path : NULL;
}

/* Parse the state file into *st; NVML_SUCCESS or the code queries return. */
static nvmlReturn_t read_state(struct state *st)
{
    const char *path = state_path();
    char line[256];
    FILE *f;
    nvmlReturn_t ret = NVML_SUCCESS;

    if (__atomic_load_n(&init_count, __ATOMIC_SEQ_CST) <= 0)
        return NVML_ERROR_UNINITIALIZED;
    if (path == NULL || (f = fopen(path, "r")) == NULL)
        return NVML_ERROR_DRIVER_NOT_LOADED;
    st->count = 0;
    st->nprocs = 0;
    while (ret == NVML_SUCCESS && fgets(line, sizeof line, f) != NULL) {
        struct device *d;
        struct process p;
        char extra;
        int code;

        if (strspn(line, " \t\r\n") == strlen(line))
            continue;
        if (sscanf(line, " proc %u %u %llu %c", &p.index, &p.pid, &p.used_mib, &extra) == 3) {
            if (st->nprocs == MAX_PROCESSES || p.used_mib > (~0ULL >> 20)) {
                ret = NVML_ERROR_UNKNOWN;
                break;
            }
            st->procs[st->nprocs++] = p;
            continue;
        }
        if (sscanf(line, " error %d %c", &code, &extra) == 1) {
            ret = code != NVML_SUCCESS ? code : NVML_ERROR_UNKNOWN;
            break;
        }
        if (st->count == MAX_DEVICES) {
            ret = NVML_ERROR_UNKNOWN;
            break;
        }
        d = &st->devices[st->count];
        if (sscanf(line, " %95s %llu %llu %c", d->name, &d->total_mib, &d->free_mib, &extra) != 3
            || d->free_mib > d->total_mib || d->total_mib > (~0ULL >> 20)) {
            ret = NVML_ERROR_UNKNOWN;
            break;
        }
        st->count++;
    }
    fclose(f);
    return ret;
}

/* The device behind a handle, re-read from the state file. */
static nvmlReturn_t lookup(nvmlDevice_t device, struct state *st, const struct device **out)
{
    nvmlReturn_t ret = read_state(st);
    size_t index;

    if (ret != NVML_SUCCESS)
        return ret;
    /* Compared as integers: a pointer from elsewhere is not in the array. */
    if ((uintptr_t)device < (uintptr_t)&slots[0]
        || (uintptr_t)device >= (uintptr_t)&slots[MAX_DEVICES])
        return NVML_ERROR_INVALID_ARGUMENT;
    index = (size_t)(device - &slots[0]);
    if (index >= st->count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *out = &st->devices[index];
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_string(const char *value, char *buffer, unsigned int length)
{
    if (buffer == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(value) >= length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buffer, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    const char *path = state_path();
    FILE *f;

    (void)flags;
    if (path == NULL || (f = fopen(path, "r")) == NULL)
        return NVML_ERROR_DRIVER_NOT_LOADED;
    fclose(f);
    __atomic_add_fetch(&init_count, 1, __ATOMIC_SEQ_CST);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlInit_v2(void)
{
    return nvmlInitWithFlags(0);
}

EXPORT nvmlReturn_t nvmlInit(void)
{
    return nvmlInitWithFlags(0);
}

EXPORT nvmlReturn_t nvmlShutdown(void)
{
    int count = __atomic_load_n(&init_count, __ATOMIC_SEQ_CST);

    while (count > 0) {
        if (__atomic_compare_exchange_n(&init_count, &count, count - 1, 0,
                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return NVML_SUCCESS;
    }
    return NVML_ERROR_UNINITIALIZED;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 8: return "Insufficient External Power";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 11: return "Interrupt Request Issue";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 14: return "Corrupted infoROM";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 17: return "The operating system has blocked the request.";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    case 19: return "In use by another client";
    case 20: return "Insufficient Memory";
    case 21: return "No data";
    case 25: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    if (__atomic_load_n(&init_count, __ATOMIC_SEQ_CST) <= 0)
        return NVML_ERROR_UNINITIALIZED;
    return copy_string(DRIVER_VERSION, version, length);
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    struct state st;
    nvmlReturn_t ret;

    if (count == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    ret = read_state(&st);
    if (ret == NVML_SUCCESS)
        *count = st.count;
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *count)
{
    return nvmlDeviceGetCount_v2(count);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    struct state st;
    nvmlReturn_t ret;

    if (device == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    ret = read_state(&st);
    if (ret != NVML_SUCCESS)
        return ret;
    if (index >= st.count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = &slots[index];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    struct state st;
    const struct device *d;
    nvmlReturn_t ret = lookup(device, &st, &d);

    return ret != NVML_SUCCESS ? ret : copy_string(d->name, name, length);
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    struct state st;
    const struct device *d;
    nvmlReturn_t ret;

    if (memory == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    ret = lookup(device, &st, &d);
    if (ret != NVML_SUCCESS)
        return ret;
    memory->total = d->total_mib << 20;
    memory->free = d->free_mib << 20;
    memory->used = memory->total - memory->free;
    return NVML_SUCCESS;
}

#ifndef FAKE_NVML_WITHOUT_MEMORY_INFO_V2
/* Left out with -DFAKE_NVML_WITHOUT_MEMORY_INFO_V2, like drivers before 510. */
EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    struct state st;
    const struct device *d;
    nvmlReturn_t ret;

    if (memory == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != nvmlMemory_v2)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    ret = lookup(device, &st, &d);
    if (ret != NVML_SUCCESS)
        return ret;
    memory->total = d->total_mib << 20;
    memory->reserved = 0;
    memory->free = d->free_mib << 20;
    memory->used = memory->total - memory->free;
    return NVML_SUCCESS;
}
#endif

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                            nvmlProcessInfo_v2_t *infos)
{
    struct state st;
    const struct device *d;
    unsigned index, i, n = 0;
    nvmlReturn_t ret;

    if (count == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    ret = lookup(device, &st, &d);
    if (ret != NVML_SUCCESS)
        return ret;
    index = (unsigned)(d - &st.devices[0]);
    for (i = 0; i < st.nprocs; i++)
        n += st.procs[i].index == index;
    if (infos == NULL || *count < n) {
        *count = n;
        return n == 0 ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *count = 0;
    for (i = 0; i < st.nprocs; i++) {
        if (st.procs[i].index != index)
            continue;
        infos[*count].pid = st.procs[i].pid;
        infos[*count].usedGpuMemory = st.procs[i].used_mib << 20;
        infos[*count].gpuInstanceId = 0xFFFFFFFFu;
        infos[*count].computeInstanceId = 0xFFFFFFFFu;
        (*count)++;
    }
    return NVML_SUCCESS;
}
