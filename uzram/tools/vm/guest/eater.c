/* The test VM's memory eater: fill about N MiB of anonymous memory with a deterministic
 * mix of pages, then read every page back twice and compare.  With guest RAM well below N,
 * most pages travel through swap (the NBD export) and back.
 *
 *   eater MIB [SEED]
 *
 * Each page's content is a function of its index and SEED only, so it can be regenerated
 * for the comparison.  Kinds (chosen per page from the same key):
 *   zero    all zero bytes
 *   same    one 8-byte value repeated (what zram stores as a "same page")
 *   text    words from a small dictionary, headed by the page index: compressible
 *   random  a pseudo-random stream: incompressible ("huge" pages)
 *
 * Prints progress as "eater: ..." and exactly one result line:
 *   UZRAM-VM-RESULT PASS pages=... mismatches=0 pswpin=... pswpout=... ...
 *   UZRAM-VM-RESULT FAIL pages=... mismatches=N ... first=PAGE:KIND:OFFSET
 * pswpin/pswpout are /proc/vmstat's counters, after minus before.  After STOP_AFTER
 * mismatches the eater stops checking (a broken device needs no full run to be found out).
 * Exit status: 0 PASS, 1 FAIL, 2 usage or setup error.
 * Build: gcc -static -O2 -o eater eater.c */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define MAX_REPORTED 8
#define STOP_AFTER 256    /* mismatches: enough to know, no need to wait for the rest */

enum kind { ZERO, SAME, TEXT, RANDOM, NKINDS };
static const char *const kind_names[NKINDS] = {"zero", "same", "text", "random"};

static const char *const words[] = {
    "swap", "page", "memory", "kernel", "compress", "block", "device", "the", "a", "of",
    "zram", "userspace", "nbd", "export", "slot", "read", "write", "lz4", "zstd", "and",
    "to", "in", "is", "for", "fill", "same", "zero", "random", "text", "verify", "seed", "index",
};
#define NWORDS (sizeof(words) / sizeof(words[0]))

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t page_key(uint64_t seed, uint64_t index)
{
    return splitmix64(seed ^ splitmix64(index));
}

static enum kind kind_of(uint64_t key)
{
    unsigned r = key % 10;      /* 20% zero, 20% same, 30% text, 30% random */
    if (r < 2)
        return ZERO;
    if (r < 4)
        return SAME;
    if (r < 7)
        return TEXT;
    return RANDOM;
}

/* Write page `index`'s content into `out` (PAGE bytes); return its kind. */
static enum kind make_page(unsigned char *out, uint64_t seed, uint64_t index)
{
    uint64_t key = page_key(seed, index);
    uint64_t state = splitmix64(key) | 1, word;
    enum kind kind = kind_of(key);
    size_t i, n;

    switch (kind) {
    case ZERO:
        memset(out, 0, PAGE);
        break;
    case SAME:
        word = splitmix64(key + 1) | 1;     /* never zero: that is the zero kind */
        for (i = 0; i < PAGE; i += 8)
            memcpy(out + i, &word, 8);
        break;
    case TEXT:
        n = (size_t)snprintf((char *)out, PAGE, "page %llu seed %llu:",
                             (unsigned long long)index, (unsigned long long)seed);
        while (n < PAGE) {
            const char *w;
            size_t len;
            state ^= state << 13, state ^= state >> 7, state ^= state << 17;
            w = words[state % NWORDS];
            len = strlen(w);
            out[n++] = (state >> 40) % 11 == 0 ? '\n' : ' ';
            for (i = 0; i < len && n < PAGE; i++)
                out[n++] = (unsigned char)w[i];
        }
        break;
    default:
        for (i = 0; i < PAGE; i += 8) {
            state ^= state << 13, state ^= state >> 7, state ^= state << 17;
            word = state * 0x2545f4914f6cdd1dULL;
            memcpy(out + i, &word, 8);
        }
        break;
    }
    return kind;
}

static void vmstat(unsigned long long *pswpin, unsigned long long *pswpout)
{
    char name[64];
    unsigned long long value;
    FILE *f = fopen("/proc/vmstat", "r");

    *pswpin = *pswpout = 0;
    if (!f)
        return;
    while (fscanf(f, "%63s %llu", name, &value) == 2) {
        if (!strcmp(name, "pswpin"))
            *pswpin = value;
        else if (!strcmp(name, "pswpout"))
            *pswpout = value;
    }
    fclose(f);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    unsigned long long in0, out0, in1, out1, mismatches = 0;
    unsigned long long counts[NKINDS] = {0};
    unsigned char expect[PAGE];
    char first[96] = "none";
    unsigned char *mem;
    size_t npages, i, pass;
    uint64_t seed;
    double t0;

    if (argc < 2 || argc > 3 || atol(argv[1]) <= 0) {
        fprintf(stderr, "usage: eater MIB [SEED]\n");
        return 2;
    }
    npages = (size_t)atol(argv[1]) * (1024 * 1024 / PAGE);
    seed = argc == 3 ? strtoull(argv[2], NULL, 0) : 1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* Keep our own code and stack resident: only the eaten memory is under test. */
    mlockall(MCL_CURRENT);

    mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        printf("UZRAM-VM-RESULT FAIL stage=mmap error=%d\n", errno);
        return 2;
    }
    vmstat(&in0, &out0);
    t0 = now();
    printf("eater: filling %zu pages (%s MiB) seed %llu\n", npages, argv[1], (unsigned long long)seed);
    for (i = 0; i < npages; i++)
        counts[make_page(mem + i * PAGE, seed, i)]++;
    printf("eater: filled in %.1f s: zero=%llu same=%llu text=%llu random=%llu\n", now() - t0,
           counts[ZERO], counts[SAME], counts[TEXT], counts[RANDOM]);

    for (pass = 0; pass < 2 && mismatches < STOP_AFTER; pass++) {
        double t1 = now();
        for (size_t j = 0; j < npages && mismatches < STOP_AFTER; j++) {
            /* First pass forwards, second backwards: different swap-in orders. */
            size_t index = pass == 0 ? j : npages - 1 - j;
            unsigned char *page = mem + index * PAGE;
            enum kind kind = make_page(expect, seed, index);
            size_t off;

            if (!memcmp(page, expect, PAGE))
                continue;
            for (off = 0; page[off] == expect[off]; off++)
                ;
            if (mismatches < MAX_REPORTED)
                printf("eater: mismatch pass=%zu page=%zu kind=%s offset=%zu want=%02x got=%02x\n",
                       pass + 1, index, kind_names[kind], off, expect[off], page[off]);
            if (!mismatches)
                snprintf(first, sizeof(first), "%zu:%s:%zu", index, kind_names[kind], off);
            mismatches++;
            /* Repair it so the second pass reports only new damage. */
            memcpy(page, expect, PAGE);
        }
        printf("eater: pass %zu checked in %.1f s, %llu mismatches so far\n", pass + 1, now() - t1,
               mismatches);
    }
    vmstat(&in1, &out1);
    printf("UZRAM-VM-RESULT %s pages=%zu mismatches=%llu pswpin=%llu pswpout=%llu seconds=%.1f"
           " zero=%llu same=%llu text=%llu random=%llu first=%s\n",
           mismatches ? "FAIL" : "PASS", npages, mismatches, in1 - in0, out1 - out0, now() - t0,
           counts[ZERO], counts[SAME], counts[TEXT], counts[RANDOM], first);
    return mismatches ? 1 : 0;
}
