#ifndef MDEGATE_SYSTEM_H
#define MDEGATE_SYSTEM_H
#include <sys/types.h>

/// Layout-identical to Linux's `struct ucred`, which Glibc only exposes with _GNU_SOURCE.
/// Read with getsockopt(fd, SOL_SOCKET, SO_PEERCRED, ...).
typedef struct {
    pid_t pid;
    uid_t uid;
    gid_t gid;
} mdegate_peer_credentials;

#endif
