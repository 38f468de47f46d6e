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
 *   - Memory the processes allocate (cudaMalloc below) is taken from FREE_MIB and
 *     reported per process like "proc" lines, while the process lives.
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
 * Allocations (the CUDA runtime's part)
 * ------------------------------------
 * Built as libcudart.so.12 too (the same file), it answers the calls a program
 * makes to take GPU memory: cudaMalloc, cudaFree, cudaSetDevice, cudaMemGetInfo,
 * cudaGetErrorString. The device is the first of CUDA_VISIBLE_DEVICES (its NVML
 * index; default 0), like a pinned process on a real host. Allocations live in
 * STATE.alloc, one line "INDEX PID MIB ID" each, replaced whole under flock(2)
 * of STATE.lock; those
 * of processes that no longer exist count no more (the driver frees a dead
 * process's memory). An allocation that does not fit in the device's free
 * memory fails with cudaErrorMemoryAllocation (2), as the real runtime does,
 * and is counted: a line "INDEX PID MIB" in STATE.oom. The tests read that file
 * to show that nothing ever ran out of memory.
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

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

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

#define MAX_ALLOCS 256

struct alloc {
    unsigned index;
    unsigned pid;
    unsigned long long mib;
    unsigned long long id;
};

static int alive(unsigned pid)
{
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

/* The allocations of live processes, from STATE.alloc; the count, or -1 if unreadable. */
static int read_allocs(const char *path, struct alloc *out)
{
    char name[4096], line[256];
    FILE *f;
    int n = 0;
    struct alloc a;
    char extra;

    if (snprintf(name, sizeof name, "%s.alloc", path) >= (int)sizeof name)
        return -1;
    if ((f = fopen(name, "r")) == NULL)
        return errno == ENOENT ? 0 : -1;
    while (n < MAX_ALLOCS && fgets(line, sizeof line, f) != NULL) {
        if (sscanf(line, " %u %u %llu %llu %c", &a.index, &a.pid, &a.mib, &a.id, &extra) == 4 && alive(a.pid))
            out[n++] = a;
    }
    fclose(f);
    return n;
}

/* Live allocations as processes, and taken from their devices' free memory. */
static nvmlReturn_t add_allocs(const char *path, struct state *st)
{
    struct alloc allocs[MAX_ALLOCS];
    int i, n = read_allocs(path, allocs);

    if (n < 0)
        return NVML_ERROR_UNKNOWN;
    for (i = 0; i < n; i++) {
        struct device *d;
        if (allocs[i].index >= st->count)
            continue;
        d = &st->devices[allocs[i].index];
        unsigned j;
        d->free_mib = allocs[i].mib > d->free_mib ? 0 : d->free_mib - allocs[i].mib;
        /* One entry per process and device, as NVML reports them, however many allocations. */
        for (j = 0; j < st->nprocs; j++)
            if (st->procs[j].index == allocs[i].index && st->procs[j].pid == allocs[i].pid)
                break;
        if (j < st->nprocs) {
            st->procs[j].used_mib += allocs[i].mib;
            continue;
        }
        if (st->nprocs == MAX_PROCESSES)
            return NVML_ERROR_UNKNOWN;
        st->procs[st->nprocs].index = allocs[i].index;
        st->procs[st->nprocs].pid = allocs[i].pid;
        st->procs[st->nprocs].used_mib = allocs[i].mib;
        st->nprocs++;
    }
    return NVML_SUCCESS;
}

static nvmlReturn_t read_state_file(struct state *st);

/* Parse the state file into *st, allocations included; NVML_SUCCESS or the code queries return. */
static nvmlReturn_t read_state(struct state *st)
{
    nvmlReturn_t ret;

    if (__atomic_load_n(&init_count, __ATOMIC_SEQ_CST) <= 0)
        return NVML_ERROR_UNINITIALIZED;
    ret = read_state_file(st);
    return ret == NVML_SUCCESS ? add_allocs(state_path(), st) : ret;
}

static nvmlReturn_t read_state_file(struct state *st)
{
    const char *path = state_path();
    char line[256];
    FILE *f;
    nvmlReturn_t ret = NVML_SUCCESS;

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


/* --- the CUDA runtime's part: allocations ------------------------------------ */

typedef int cudaError_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2,
       cudaErrorInitializationError = 3, cudaErrorInvalidDevice = 101 };

static int current_device = -1;  /* cudaSetDevice's, else the first visible */

static int visible(int ordinal)
{
    const char *list = getenv("CUDA_VISIBLE_DEVICES");
    int i = 0;

    if (list == NULL || list[0] == '\0')
        return ordinal;
    while (*list) {
        char *end;
        long index = strtol(list, &end, 10);
        if (end == list || index < 0)
            return -1;
        if (i++ == ordinal)
            return (int)index;
        list = *end == ',' ? end + 1 : end;
        if (*end != ',' && *end != '\0')
            return -1;
    }
    return -1;
}

EXPORT const char *cudaGetErrorString(cudaError_t error)
{
    switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    default: return "unknown error";
    }
}

EXPORT cudaError_t cudaSetDevice(int device)
{
    if (visible(device) < 0)
        return cudaErrorInvalidDevice;
    current_device = device;
    return cudaSuccess;
}

/* Lock STATE.lock (created if need be): its fd, or -1. Only writers lock: they replace
 * STATE.alloc whole (a temporary file renamed over it), so readers never see half of one. */
static int lock_allocs(const char *path)
{
    char name[4096];
    int fd;

    if (snprintf(name, sizeof name, "%s.lock", path) >= (int)sizeof name)
        return -1;
    fd = open(name, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0)
        return -1;
    (void)fchmod(fd, 0666);  /* agents of several users share it */
    if (flock(fd, LOCK_EX) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Replace STATE.alloc by these allocations (under the lock). */
static int write_allocs(const char *path, const struct alloc *allocs, int n)
{
    char name[4096], partial[4096];
    FILE *f;
    int i;

    if (snprintf(name, sizeof name, "%s.alloc", path) >= (int)sizeof name
        || snprintf(partial, sizeof partial, "%s.alloc.%d", path, (int)getpid()) >= (int)sizeof partial
        || (f = fopen(partial, "w")) == NULL)
        return -1;
    (void)fchmod(fileno(f), 0666);
    for (i = 0; i < n; i++)
        fprintf(f, "%u %u %llu %llu\n", allocs[i].index, allocs[i].pid, allocs[i].mib, allocs[i].id);
    if (fclose(f) != 0 || rename(partial, name) != 0) {
        unlink(partial);
        return -1;
    }
    return 0;
}

static void count_oom(const char *path, unsigned index, unsigned long long mib)
{
    char name[4096];
    FILE *f;

    if (snprintf(name, sizeof name, "%s.oom", path) >= (int)sizeof name || (f = fopen(name, "a")) == NULL)
        return;
    fprintf(f, "%u %u %llu\n", index, (unsigned)getpid(), mib);
    fclose(f);
}

EXPORT cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    struct state st;
    int index = visible(current_device < 0 ? 0 : current_device);
    const char *path = state_path();

    if (free_bytes == NULL || total_bytes == NULL)
        return cudaErrorInvalidValue;
    if (path == NULL || index < 0 || read_state_file(&st) != NVML_SUCCESS || add_allocs(path, &st) != NVML_SUCCESS)
        return cudaErrorInitializationError;
    if ((unsigned)index >= st.count)
        return cudaErrorInvalidDevice;
    *free_bytes = (size_t)(st.devices[index].free_mib << 20);
    *total_bytes = (size_t)(st.devices[index].total_mib << 20);
    return cudaSuccess;
}

EXPORT cudaError_t cudaMalloc(void **pointer, size_t size)
{
    static unsigned long long next_id;
    struct state st;
    struct alloc allocs[MAX_ALLOCS];
    const char *path = state_path();
    int index = visible(current_device < 0 ? 0 : current_device);
    unsigned long long mib = ((unsigned long long)size + (1ULL << 20) - 1) >> 20;
    int fd, n;
    cudaError_t result = cudaSuccess;

    if (pointer == NULL)
        return cudaErrorInvalidValue;
    if (path == NULL || index < 0)
        return cudaErrorInitializationError;
    if ((fd = lock_allocs(path)) < 0)
        return cudaErrorInitializationError;
    if (read_state_file(&st) != NVML_SUCCESS || (n = read_allocs(path, allocs)) < 0 || n == MAX_ALLOCS) {
        result = cudaErrorInitializationError;
    } else if ((unsigned)index >= st.count) {
        result = cudaErrorInvalidDevice;
    } else {
        unsigned long long free_mib = st.devices[index].free_mib;
        int i;
        for (i = 0; i < n; i++)
            if (allocs[i].index == (unsigned)index)
                free_mib = allocs[i].mib > free_mib ? 0 : free_mib - allocs[i].mib;
        if (mib > free_mib) {
            count_oom(path, (unsigned)index, mib);
            result = cudaErrorMemoryAllocation;
        } else {
            allocs[n].index = (unsigned)index;
            allocs[n].pid = (unsigned)getpid();
            allocs[n].mib = mib;
            allocs[n].id = ((unsigned long long)getpid() << 24) | ++next_id;
            if (write_allocs(path, allocs, n + 1) != 0)
                result = cudaErrorInitializationError;
            else
                *pointer = (void *)(uintptr_t)(allocs[n].id << 8);  /* not memory: a handle for cudaFree */
        }
    }
    close(fd);  /* the lock goes with it */
    return result;
}

EXPORT cudaError_t cudaFree(void *pointer)
{
    struct alloc allocs[MAX_ALLOCS];
    const char *path = state_path();
    unsigned long long id = (unsigned long long)(uintptr_t)pointer >> 8;
    int fd, n, i, kept = 0;

    if (pointer == NULL)
        return cudaSuccess;
    if (path == NULL || (fd = lock_allocs(path)) < 0)
        return cudaErrorInitializationError;
    n = read_allocs(path, allocs);
    for (i = 0; i < n; i++)
        if (allocs[i].id != id)
            allocs[kept++] = allocs[i];
    if (n >= 0)
        write_allocs(path, allocs, kept);
    close(fd);
    return n < 0 ? cudaErrorInitializationError : (kept == n ? cudaErrorInvalidValue : cudaSuccess);
}
