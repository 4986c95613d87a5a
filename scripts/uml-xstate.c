/*
 * LD_PRELOAD shim for linux.uml (User-Mode Linux) on hosts whose CPU has a
 * larger XSAVE area than the UML kernel knows (AVX-512, AMX: ~11 KiB on a
 * Sapphire Rapids Xeon, against the 832 bytes of x87+SSE+AVX UML 6.1 and
 * 6.12 pass).
 *
 * UML saves and restores the FPU state of the host processes that run its
 * guests with PTRACE_GETREGSET / PTRACE_SETREGSET (NT_X86_XSTATE), using a
 * buffer of its own fixed size. The host kernel truncates a short GET but
 * refuses a short SET with EFAULT ("userspace - ptrace set fp regs failed,
 * errno = 14"), and UML panics at its first process. Merely padding the SET
 * would lose the state past UML's buffer (the upper AVX-512 registers that
 * glibc's string functions use on such a CPU) at every switch between
 * guest threads.
 *
 * So, for an xstate regset call shorter than the host's: a GET reads the
 * whole state into a shadow buffer kept per caller buffer (UML keeps one
 * per guest task, in its registers structure) and hands UML its part; a SET
 * writes UML's part over that shadow and sets the whole. Every other call,
 * and every call on a host where UML's buffer is big enough, goes straight
 * to the C library's ptrace. Built and used by scripts/uml-run.sh.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>

typedef long (*ptrace_fn)(enum __ptrace_request, ...);
static ptrace_fn real_ptrace;
/* The host's xstate regset size; 0 until the first xstate call. */
static size_t full_size;

struct shadow {
	void *key; /* UML's buffer */
	unsigned char *buf; /* full_size bytes */
	int valid; /* buf holds a state read from the host */
};
/* Open addressing on the buffer's address; UML has one per guest task. */
static struct shadow *tab;
static size_t tab_cap, tab_len;

static size_t slot(void *key, size_t cap)
{
	uintptr_t h = (uintptr_t)key;
	h ^= h >> 17;
	h *= 0x9e3779b97f4a7c15ULL;
	return (size_t)(h >> 20) & (cap - 1);
}

static int grow(void)
{
	size_t cap = tab_cap ? tab_cap * 2 : 1024;
	struct shadow *t = calloc(cap, sizeof(*t));
	if (!t)
		return -1;
	for (size_t i = 0; i < tab_cap; i++) {
		if (!tab[i].key)
			continue;
		size_t j = slot(tab[i].key, cap);
		while (t[j].key)
			j = (j + 1) & (cap - 1);
		t[j] = tab[i];
	}
	free(tab);
	tab = t;
	tab_cap = cap;
	return 0;
}

static struct shadow *shadow_of(void *key)
{
	if ((tab_len + 1) * 2 > tab_cap && grow() < 0)
		return NULL;
	size_t j = slot(key, tab_cap);
	while (tab[j].key && tab[j].key != key)
		j = (j + 1) & (tab_cap - 1);
	if (!tab[j].key) {
		tab[j].buf = calloc(1, full_size);
		if (!tab[j].buf)
			return NULL;
		tab[j].key = key;
		tab[j].valid = 0;
		tab_len++;
	}
	return &tab[j];
}

long ptrace(enum __ptrace_request request, ...)
{
	va_list ap;
	va_start(ap, request);
	pid_t pid = va_arg(ap, pid_t);
	void *addr = va_arg(ap, void *);
	void *data = va_arg(ap, void *);
	va_end(ap);
	if (!real_ptrace) {
		real_ptrace = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
		if (!real_ptrace) {
			errno = ENOSYS;
			return -1;
		}
	}
	if ((request != PTRACE_GETREGSET && request != PTRACE_SETREGSET) ||
	    (uintptr_t)addr != NT_X86_XSTATE || !data)
		return real_ptrace(request, pid, addr, data);
	struct iovec *iov = data;
	if (!full_size) {
		/* The kernel shortens iov_len to its regset's size. */
		static unsigned char probe[1 << 16];
		struct iovec p = { probe, sizeof(probe) };
		long r = real_ptrace(PTRACE_GETREGSET, pid, addr, &p);
		if (r < 0)
			return r;
		full_size = p.iov_len;
	}
	if (iov->iov_len >= full_size)
		return real_ptrace(request, pid, addr, data);
	struct shadow *s = shadow_of(iov->iov_base);
	if (!s) {
		errno = ENOMEM;
		return -1;
	}
	struct iovec full = { s->buf, full_size };
	if (request == PTRACE_GETREGSET) {
		long r = real_ptrace(PTRACE_GETREGSET, pid, addr, &full);
		if (r < 0)
			return r;
		s->valid = 1;
		memcpy(iov->iov_base, s->buf, iov->iov_len);
		return r;
	}
	/* A buffer never read into (UML's initial registers): the target's
	 * current state under UML's part. */
	if (!s->valid) {
		long r = real_ptrace(PTRACE_GETREGSET, pid, addr, &full);
		if (r < 0)
			return r;
		s->valid = 1;
	}
	memcpy(s->buf, iov->iov_base, iov->iov_len);
	return real_ptrace(PTRACE_SETREGSET, pid, addr, &full);
}
