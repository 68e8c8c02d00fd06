/*
 * mptcpwrap: an LD_PRELOAD shim that makes a program's TCP sockets MPTCP.
 *
 * socket(AF_INET or AF_INET6, SOCK_STREAM [| flags], 0 or IPPROTO_TCP) asks
 * the kernel for IPPROTO_MPTCP instead.  When the kernel cannot give one
 * (MPTCP built out or disabled: EINVAL, EPROTONOSUPPORT, ENOPROTOOPT), the
 * plain TCP socket the program asked for is made, so the program works as
 * before.  Every other socket is left alone.  With MPTCPWRAP_DEBUG set in
 * the environment, each rewrite (and each fallback) is told on stderr.
 *
 * Built by the package's installation (setup.py) as a shared object that
 * mptcpize puts in LD_PRELOAD.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif

typedef int (*socket_fn)(int, int, int);

static socket_fn next_socket(void)
{
	static socket_fn real;

	if (real == NULL)
		real = (socket_fn)dlsym(RTLD_NEXT, "socket");
	return real;
}

static int mptcp_unavailable(int error)
{
	return error == EINVAL || error == EPROTONOSUPPORT || error == ENOPROTOOPT;
}

int socket(int family, int type, int protocol)
{
	socket_fn real = next_socket();
	int debug, fd, error;

	if (real == NULL) {
		errno = ENOSYS;
		return -1;
	}
	if ((family != AF_INET && family != AF_INET6) || (type & 0xff) != SOCK_STREAM ||
	    (protocol != 0 && protocol != IPPROTO_TCP))
		return real(family, type, protocol);

	debug = getenv("MPTCPWRAP_DEBUG") != NULL;
	fd = real(family, type, IPPROTO_MPTCP);
	if (fd >= 0 || !mptcp_unavailable(errno)) {
		if (debug) {
			error = errno;
			fprintf(stderr, "mptcpwrap: changing socket protocol from 0x%x to 0x%x "
				"(IPPROTO_MPTCP) for family 0x%x type 0x%x fd %d\n",
				protocol, IPPROTO_MPTCP, family, type, fd);
			errno = error;
		}
		return fd;
	}
	if (debug)
		fprintf(stderr, "mptcpwrap: MPTCP is not available (%s): keeping protocol "
			"0x%x for family 0x%x type 0x%x\n", strerror(errno), protocol, family,
			type);
	return real(family, type, protocol);
}
