/*
 * Sprite object store: local directory backend
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Object KEY is the file ROOT/KEY; the '/'s of the key are directories,
 * created on put and removed when a delete leaves them empty.  The layout
 * is exactly what S3 would hold, so a store can be copied to a bucket with
 * any sync tool (minus the hidden files below).
 *
 * Hidden files (never objects: keys may not contain a component starting
 * with SPRITE_OBJSTORE_RESERVED_PREFIX, and listings skip them):
 *   ROOT/.sprite-lock          flock()ed while a put or delete replaces or
 *                              removes an object (see "Atomicity")
 *   DIR/.sprite-tmp-XXXXXX     a put in progress, or left by a crash
 *
 * Put: the data go to DIR/.sprite-tmp-XXXXXX, which is fsync()ed, then
 * renamed (or, for If-None-Match, link()ed) to the key's name, and DIR is
 * fsync()ed, as are the parents of directories the put created.  A reader
 * sees the old object or the new one, never a part, and a put that returned
 * survives a power loss.
 *
 * ETag: the 128-bit XXH3 hash of the content, as 32 lowercase hex digits
 * (the same content always has the same ETag, as with S3's MD5 ETags).  It
 * is computed from the data on put and by reading the file on head; there is
 * no cache to go stale.
 *
 * Atomicity: If-None-Match is link(2), which fails with EEXIST when the name
 * exists, atomically.  If-Match must compare and replace atomically, so the
 * comparison and rename() are done with ROOT/.sprite-lock flock()ed; every
 * other rename() and unlink() of an object takes the same lock, so none can
 * slip between the comparison and the rename.  flock() excludes other
 * processes and, because each call opens the lock file anew (a new open
 * file description), other threads of this process too.
 *
 * Limitation: a key cannot be both an object and a prefix of other keys
 * ("a" and "a/b"), which S3 allows; such a put fails with -ENOTSUP.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "objstore/objstore-int.h"

#define FILE_LOCK_NAME SPRITE_OBJSTORE_RESERVED_PREFIX "lock"
#define FILE_TMP_TEMPLATE SPRITE_OBJSTORE_RESERVED_PREFIX "tmp-XXXXXX"
/* A concurrent delete may remove a directory a put has just created. */
#define FILE_PUT_ATTEMPTS 16
#define FILE_READ_CHUNK (1024 * 1024)

typedef struct SpriteFileStore {
    SpriteObjstore common;
    char *root;             /* absolute; immutable after open */
} SpriteFileStore;

static SpriteFileStore *file_store(SpriteObjstore *os)
{
    return (SpriteFileStore *)os;
}

static char *file_etag_of_hash(XXH128_hash_t h)
{
    return g_strdup_printf("%016" G_GINT64_MODIFIER "x%016"
                           G_GINT64_MODIFIER "x",
                           (guint64)h.high64, (guint64)h.low64);
}

/* Caller frees the result. */
static char *file_etag_of_buffer(const void *data, size_t len)
{
    return file_etag_of_hash(XXH3_128bits(data, len));
}

/* Report -ENOENT for @key, saying whether the whole directory is missing. */
static int file_enoent(SpriteFileStore *s, const char *what, const char *key,
                       GError **errp)
{
    if (!g_file_test(s->root, G_FILE_TEST_IS_DIR)) {
        return sprite_objstore_fail(errp, ENOENT,
                                    "the directory does not exist");
    }
    return sprite_objstore_fail(errp, ENOENT, "%s '%s': no such object",
                                what, key);
}

static int file_errno(int err, const char *what, const char *key,
                      GError **errp)
{
    return sprite_objstore_fail(errp, err, "%s '%s': %s", what, key,
                                g_strerror(err));
}

/*
 * Open @key for reading; on success returns the fd and fills *@st.
 * Anything but a regular file is not an object.
 */
static int file_open_object(SpriteFileStore *s, const char *what,
                            const char *key, struct stat *st, GError **errp)
{
    g_autofree char *path = g_build_filename(s->root, key, NULL);
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR) {
            return file_enoent(s, what, key, errp);
        }
        return file_errno(errno, what, key, errp);
    }
    if (fstat(fd, st) < 0) {
        int err = errno;

        close(fd);
        return file_errno(err, what, key, errp);
    }
    if (!S_ISREG(st->st_mode)) {
        close(fd);
        return file_enoent(s, what, key, errp);
    }
    return fd;
}

/* pread() until @len bytes or end of file; returns bytes read or -errno. */
static ssize_t file_pread_full(int fd, void *buf, size_t len, off_t off)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, off + done);

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (n == 0) {
            break;
        }
        done += n;
    }
    return done;
}

static int file_etag_of_fd(int fd, const char *key, char **etag_out,
                           GError **errp)
{
    XXH3_state_t *st = XXH3_createState();
    g_autofree char *buf = g_malloc(FILE_READ_CHUNK);
    off_t off = 0;
    ssize_t n;

    XXH3_128bits_reset(st);
    while ((n = file_pread_full(fd, buf, FILE_READ_CHUNK, off)) > 0) {
        XXH3_128bits_update(st, buf, n);
        off += n;
    }
    if (n == 0) {
        *etag_out = file_etag_of_hash(XXH3_128bits_digest(st));
    }
    XXH3_freeState(st);
    if (n < 0) {
        return file_errno(-n, "read", key, errp);
    }
    return 0;
}

static int file_fsync_dir(const char *dir, GError **errp)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int err = 0;

    if (fd < 0) {
        err = errno;
    } else {
        if (fsync(fd) < 0) {
            err = errno;
        }
        close(fd);
    }
    if (err) {
        return sprite_objstore_fail(errp, err, "fsync of directory %s: %s",
                                    dir, g_strerror(err));
    }
    return 0;
}

/* Returns an fd holding the store's lock; close() it to unlock. */
static int file_lock(SpriteFileStore *s, const char *what, const char *key,
                     GError **errp)
{
    g_autofree char *path = g_build_filename(s->root, FILE_LOCK_NAME, NULL);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);

    if (fd < 0) {
        int err = errno;

        if (err == ENOENT) {
            return file_enoent(s, what, key, errp);
        }
        return sprite_objstore_fail(errp, err, "%s '%s': lock file %s: %s",
                                    what, key, path, g_strerror(err));
    }
    while (flock(fd, LOCK_EX) < 0) {
        int err = errno;

        if (err != EINTR) {
            close(fd);
            return sprite_objstore_fail(errp, err, "%s '%s': flock %s: %s",
                                        what, key, path, g_strerror(err));
        }
    }
    return fd;
}

static int file_conflict(const char *key, GError **errp)
{
    return sprite_objstore_fail(errp, ENOTSUP,
                                "put '%s': a local store cannot hold an "
                                "object that is also a prefix of another "
                                "key ('a' and 'a/b')", key);
}

/*
 * Create the directories of @key below the root.  Adds to @created the
 * parent of each directory created (to be fsync()ed).  -ENOENT means a
 * concurrent delete removed a parent: try again.
 */
static int file_mkdirs(SpriteFileStore *s, const char *key,
                       GPtrArray *created, GError **errp)
{
    for (const char *slash = strchr(key, '/'); slash;
         slash = strchr(slash + 1, '/')) {
        g_autofree char *rel = g_strndup(key, slash - key);
        g_autofree char *path = g_build_filename(s->root, rel, NULL);
        struct stat st;

        if (mkdir(path, 0755) == 0) {
            g_ptr_array_add(created, g_path_get_dirname(path));
            continue;
        }
        if (errno == ENOENT) {
            return -ENOENT;
        }
        if (errno == ENOTDIR) {
            return file_conflict(key, errp);
        }
        if (errno != EEXIST) {
            return file_errno(errno, "put", key, errp);
        }
        if (stat(path, &st) < 0) {
            if (errno == ENOENT) {
                return -ENOENT;
            }
            return file_errno(errno, "put", key, errp);
        }
        if (!S_ISDIR(st.st_mode)) {
            return file_conflict(key, errp);
        }
    }
    return 0;
}

static int file_write_full(int fd, const void *data, size_t len)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = write(fd, (const char *)data + done, len - done);

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        done += n;
    }
    return 0;
}

/*
 * Write @data to a new temporary file in the directory of @key (created as
 * needed) and fsync it.  On success *@tmp_out is its path (caller frees and
 * unlinks it unless it was renamed).
 */
static int file_write_tmp(SpriteFileStore *s, const char *key,
                          const void *data, size_t len, GPtrArray *created,
                          char **tmp_out, GError **errp)
{
    g_autofree char *path = g_build_filename(s->root, key, NULL);
    g_autofree char *dir = g_path_get_dirname(path);
    g_autofree char *tmp = NULL;
    int fd = -1;
    int ret;

    if (!g_file_test(s->root, G_FILE_TEST_IS_DIR)) {
        return file_enoent(s, "put", key, errp);
    }
    for (int attempt = 0; fd < 0; attempt++) {
        if (attempt == FILE_PUT_ATTEMPTS) {
            return file_enoent(s, "put", key, errp);
        }
        ret = file_mkdirs(s, key, created, errp);
        if (ret == -ENOENT) {
            continue;
        } else if (ret < 0) {
            return ret;
        }
        g_free(tmp);
        tmp = g_build_filename(dir, FILE_TMP_TEMPLATE, NULL);
        fd = g_mkstemp_full(tmp, O_WRONLY | O_CLOEXEC, 0644);
        if (fd < 0 && errno != ENOENT) {
            if (errno == ENOTDIR) {
                return file_conflict(key, errp);
            }
            return file_errno(errno, "put", key, errp);
        }
    }

    ret = file_write_full(fd, data, len);
    if (ret == 0 && fsync(fd) < 0) {
        ret = -errno;
    }
    if (close(fd) < 0 && ret == 0) {
        ret = -errno;
    }
    if (ret < 0) {
        unlink(tmp);
        return file_errno(-ret, "put", key, errp);
    }
    *tmp_out = g_steal_pointer(&tmp);
    return 0;
}

/* Called with the store's lock held. */
static int file_check_etag(SpriteFileStore *s, const char *key,
                           const char *if_match, GError **errp)
{
    g_autofree char *cur = NULL;
    struct stat st;
    int fd, ret;

    fd = file_open_object(s, "put", key, &st, errp);
    if (fd < 0) {
        return fd;
    }
    ret = file_etag_of_fd(fd, key, &cur, errp);
    close(fd);
    if (ret < 0) {
        return ret;
    }
    if (strcmp(cur, if_match)) {
        return sprite_objstore_fail(errp, EEXIST,
                                    "put '%s' if ETag is %s: the object "
                                    "changed (ETag %s)", key, if_match, cur);
    }
    return 0;
}

static int file_put(SpriteObjstore *os, const char *key, const void *data,
                    size_t len, SpriteObjstorePutFlags flags,
                    const char *if_match, char **etag_out, GError **errp)
{
    SpriteFileStore *s = file_store(os);
    g_autofree char *path = g_build_filename(s->root, key, NULL);
    g_autofree char *dir = g_path_get_dirname(path);
    g_autofree char *tmp = NULL;
    g_autoptr(GPtrArray) created = g_ptr_array_new_with_free_func(g_free);
    int lockfd = -1;
    int ret;

    ret = file_write_tmp(s, key, data, len, created, &tmp, errp);
    if (ret < 0) {
        return ret;
    }

    if (flags & SPRITE_PUT_IF_NONE_MATCH) {
        /* Atomic by itself; see "Atomicity" for why no lock is needed. */
        if (link(tmp, path) < 0) {
            int err = errno;

            if (err == EEXIST && g_file_test(path, G_FILE_TEST_IS_DIR)) {
                ret = file_conflict(key, errp);
            } else if (err == EEXIST) {
                ret = sprite_objstore_fail(errp, EEXIST,
                                           "put '%s' if absent: the object "
                                           "exists", key);
            } else {
                ret = file_errno(err, "put", key, errp);
            }
            goto out;
        }
        goto synced;
    }

    lockfd = file_lock(s, "put", key, errp);
    if (lockfd < 0) {
        ret = lockfd;
        goto out;
    }
    if (if_match) {
        ret = file_check_etag(s, key, if_match, errp);
        if (ret < 0) {
            goto out;
        }
    }
    if (rename(tmp, path) < 0) {
        int err = errno;

        /* A directory left empty by a crashed delete is in the way. */
        if ((err == EISDIR || err == ENOTEMPTY || err == EEXIST) &&
            rmdir(path) == 0 && rename(tmp, path) == 0) {
            goto renamed;
        }
        if (err == EISDIR || err == ENOTEMPTY || err == EEXIST) {
            ret = file_conflict(key, errp);
        } else {
            ret = file_errno(err, "put", key, errp);
        }
        goto out;
    }
renamed:
    g_clear_pointer(&tmp, g_free);
    close(lockfd);
    lockfd = -1;

synced:
    ret = file_fsync_dir(dir, errp);
    for (guint i = 0; ret == 0 && i < created->len; i++) {
        ret = file_fsync_dir(created->pdata[i], errp);
    }
    if (ret == 0 && etag_out) {
        *etag_out = file_etag_of_buffer(data, len);
    }

out:
    if (lockfd >= 0) {
        close(lockfd);
    }
    if (tmp) {
        unlink(tmp);
    }
    return ret;
}

static int file_get(SpriteObjstore *os, const char *key, uint64_t offset,
                    size_t len, void *buf, size_t *got, GError **errp)
{
    struct stat st;
    ssize_t n;
    int fd;

    fd = file_open_object(file_store(os), "get", key, &st, errp);
    if (fd < 0) {
        return fd;
    }
    if (offset >= (uint64_t)st.st_size) {
        close(fd);
        *got = 0;
        return 0;
    }
    n = file_pread_full(fd, buf, len, offset);
    close(fd);
    if (n < 0) {
        return file_errno(-n, "get", key, errp);
    }
    *got = n;
    return 0;
}

static int file_get_all(SpriteObjstore *os, const char *key, GBytes **out,
                        char **etag_out, GError **errp)
{
    struct stat st;
    g_autofree char *buf = NULL;
    ssize_t n;
    int fd;

    fd = file_open_object(file_store(os), "get", key, &st, errp);
    if (fd < 0) {
        return fd;
    }
    buf = g_malloc(st.st_size ? st.st_size : 1);
    n = file_pread_full(fd, buf, st.st_size, 0);
    close(fd);
    if (n < 0) {
        return file_errno(-n, "get", key, errp);
    }
    if (n != st.st_size) {
        /* Objects are never modified in place: this is not a race. */
        return sprite_objstore_fail(errp, EIO,
                                    "get '%s': file shorter than its size",
                                    key);
    }
    if (etag_out) {
        *etag_out = file_etag_of_buffer(buf, n);
    }
    *out = g_bytes_new_take(g_steal_pointer(&buf), n);
    return 0;
}

static int file_head(SpriteObjstore *os, const char *key, uint64_t *size,
                     char **etag_out, GError **errp)
{
    struct stat st;
    int fd, ret = 0;

    fd = file_open_object(file_store(os), "head", key, &st, errp);
    if (fd < 0) {
        return fd;
    }
    if (size) {
        *size = st.st_size;
    }
    if (etag_out) {
        ret = file_etag_of_fd(fd, key, etag_out, errp);
    }
    close(fd);
    return ret;
}

static int file_delete(SpriteObjstore *os, const char *key, GError **errp)
{
    SpriteFileStore *s = file_store(os);
    g_autofree char *path = g_build_filename(s->root, key, NULL);
    g_autofree char *dir = NULL;
    int lockfd, err = 0;
    int ret;

    lockfd = file_lock(s, "delete", key, errp);
    if (lockfd < 0) {
        return lockfd;
    }
    if (unlink(path) < 0) {
        err = errno;
    }
    close(lockfd);
    if (err == ENOENT || err == ENOTDIR || err == EISDIR) {
        return 0;
    } else if (err) {
        return file_errno(err, "delete", key, errp);
    }

    dir = g_path_get_dirname(path);
    ret = file_fsync_dir(dir, errp);
    if (ret < 0) {
        return ret;
    }
    /* Best effort: fails harmlessly as soon as a directory is not empty. */
    while (strlen(dir) > strlen(s->root) && rmdir(dir) == 0) {
        char *parent = g_path_get_dirname(dir);

        g_free(dir);
        dir = parent;
    }
    return 0;
}

typedef struct FileEntry {
    char *key;              /* the key, or the directory's path + "/" */
    bool is_dir;
} FileEntry;

static void file_entry_clear(gpointer p)
{
    g_free(((FileEntry *)p)->key);
}

static gint file_entry_cmp(gconstpointer a, gconstpointer b)
{
    /*
     * A directory sorts as its name followed by '/', which puts its keys
     * exactly where they belong in the byte order of all keys ("a-b" <
     * "a/c" < "a0").
     */
    return strcmp(((const FileEntry *)a)->key, ((const FileEntry *)b)->key);
}

typedef struct FileList {
    SpriteFileStore *s;
    const char *prefix;
    const char *start_after;    /* NULL: no bound */
    SpriteObjstoreListFn fn;
    void *opaque;
} FileList;

/* Could a key below directory @dirkey (ending in '/') be listed? */
static bool file_list_wants_dir(FileList *l, const char *dirkey)
{
    if (!g_str_has_prefix(dirkey, l->prefix) &&
        !g_str_has_prefix(l->prefix, dirkey)) {
        return false;
    }
    if (l->start_after && strcmp(dirkey, l->start_after) < 0 &&
        !g_str_has_prefix(l->start_after, dirkey)) {
        return false;       /* every key below sorts before start_after */
    }
    return true;
}

/* Is @name a file name that a key component can be? */
static bool file_name_is_component(const char *name)
{
    if (!strcmp(name, ".") || !strcmp(name, "..") ||
        g_str_has_prefix(name, SPRITE_OBJSTORE_RESERVED_PREFIX) ||
        !g_utf8_validate(name, -1, NULL)) {
        return false;
    }
    for (const char *p = name; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            return false;
        }
    }
    return true;
}

/*
 * List directory @rel ("" for the root, else ending in '/').  Returns 0,
 * the callback's non-zero value, or -errno with *errp set.
 */
static int file_list_dir(FileList *l, const char *rel, GError **errp)
{
    g_autofree char *path = g_build_filename(l->s->root, rel, NULL);
    g_autoptr(GArray) entries = g_array_new(FALSE, FALSE, sizeof(FileEntry));
    struct dirent *de;
    DIR *d;
    int ret = 0;

    g_array_set_clear_func(entries, file_entry_clear);
    d = opendir(path);
    if (!d) {
        int err = errno;

        if (rel[0] && (err == ENOENT || err == ENOTDIR)) {
            return 0;       /* removed by a concurrent delete */
        }
        if (err == ENOENT) {
            return sprite_objstore_fail(errp, ENOENT,
                                        "the directory does not exist");
        }
        return sprite_objstore_fail(errp, err, "list %s: %s", path,
                                    g_strerror(err));
    }
    while ((errno = 0, de = readdir(d))) {
        FileEntry e;
        bool is_dir;

        if (!file_name_is_component(de->d_name)) {
            continue;
        }
        if (de->d_type == DT_DIR || de->d_type == DT_REG) {
            is_dir = de->d_type == DT_DIR;
        } else {
            struct stat st;

            if (fstatat(dirfd(d), de->d_name, &st, 0) < 0) {
                continue;   /* vanished, or a dangling symlink */
            }
            if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) {
                continue;
            }
            is_dir = S_ISDIR(st.st_mode);
        }
        e.is_dir = is_dir;
        e.key = g_strconcat(rel, de->d_name, is_dir ? "/" : "", NULL);
        g_array_append_val(entries, e);
    }
    if (errno) {
        int err = errno;

        ret = sprite_objstore_fail(errp, err, "list %s: %s", path,
                                   g_strerror(err));
    }
    closedir(d);
    if (ret < 0) {
        return ret;
    }
    g_array_sort(entries, file_entry_cmp);

    for (guint i = 0; i < entries->len && ret == 0; i++) {
        FileEntry *e = &g_array_index(entries, FileEntry, i);
        g_autofree char *fpath = NULL;
        struct stat st;

        if (e->is_dir) {
            if (file_list_wants_dir(l, e->key)) {
                ret = file_list_dir(l, e->key, errp);
            }
            continue;
        }
        if (!g_str_has_prefix(e->key, l->prefix) ||
            (l->start_after && strcmp(e->key, l->start_after) <= 0)) {
            continue;
        }
        fpath = g_build_filename(l->s->root, e->key, NULL);
        if (stat(fpath, &st) < 0 || !S_ISREG(st.st_mode)) {
            continue;       /* deleted since readdir */
        }
        ret = l->fn(e->key, st.st_size, l->opaque);
    }
    return ret;
}

static int file_list(SpriteObjstore *os, const char *prefix,
                     const char *start_after, SpriteObjstoreListFn fn,
                     void *opaque, GError **errp)
{
    FileList l = {
        .s = file_store(os),
        .prefix = prefix,
        .start_after = start_after,
        .fn = fn,
        .opaque = opaque,
    };

    return file_list_dir(&l, "", errp);
}

static int file_check(SpriteObjstore *os, GError **errp)
{
    SpriteFileStore *s = file_store(os);
    struct stat st;

    if (stat(s->root, &st) < 0) {
        int err = errno;

        if (err == ENOENT || err == ENOTDIR) {
            return sprite_objstore_fail(errp, ENOENT,
                                        "the directory does not exist");
        }
        return sprite_objstore_fail(errp, err, "%s", g_strerror(err));
    }
    if (!S_ISDIR(st.st_mode)) {
        return sprite_objstore_fail(errp, ENOENT, "not a directory");
    }
    if (access(s->root, R_OK | W_OK | X_OK) < 0) {
        int err = errno;

        return sprite_objstore_fail(errp, err, "%s", g_strerror(err));
    }
    return 0;
}

static void file_close(SpriteObjstore *os)
{
    SpriteFileStore *s = file_store(os);

    g_free(s->root);
    g_free(s);
}

static const SpriteObjstoreOps file_ops = {
    .name = "file",
    .check = file_check,
    .get = file_get,
    .get_all = file_get_all,
    .put = file_put,
    .head = file_head,
    .delete = file_delete,
    .list = file_list,
    .close = file_close,
};

int sprite_file_open(const SpriteObjstoreConfig *cfg, SpriteObjstore **out,
                     GError **errp)
{
    SpriteFileStore *s;
    const char *root = cfg->url->root;

    if (!root || !g_path_is_absolute(root)) {
        return sprite_objstore_fail(errp, EINVAL,
                                    "the local store needs an absolute "
                                    "directory");
    }
    s = g_new0(SpriteFileStore, 1);
    s->common.ops = &file_ops;
    s->root = g_strdup(root);
    s->common.description = g_strdup_printf("directory %s", root);
    *out = &s->common;
    return 0;
}
