"""A storage engine driven height by height, for the semantic oracle tests (tests/engines.rs).

    engine.py run ENGINE DIR      prepare DIR, then read commands from stdin:
        commit H    finish height H's transaction (its first half may be pending) and commit it
        begin H     start height H's transaction and write half of it, without committing
        answers "ok DIGEST PMD_KB": the digest of the committed state, independently modelled
        (and checked against what the engine returns), and FilePmdMapped of its data file.
    engine.py verify ENGINE DIR   open DIR and print the digest of what the engine returns.

Heights are deterministic (seeded by H), so a restored copy can be checked against the digest
recorded when H was committed. The data is first written into DIR.load and copied into DIR in
2 MiB chunks, the way a restored or downloaded data directory arrives, so the page cache holds
2 MiB folios; then every page is read, so a shared mapping gets PMD mappings where it can.
"""
import hashlib
import os
import random
import shutil
import sqlite3
import sys

KEYS = 6000
LOAD_VALUE = 1500


def digest(items):
    h = hashlib.sha256()
    for k, v in items:
        h.update(len(k).to_bytes(4, "little") + k + len(v).to_bytes(4, "little") + v)
    return h.hexdigest()


class Lmdb:
    def __init__(self, d, writemap):
        import lmdb

        self.env = lmdb.open(d, map_size=256 << 20, writemap=writemap, sync=True, metasync=True)
        self.data = os.path.join(d, "data.mdb")

    def begin(self):
        self.txn = self.env.begin(write=True)

    def put(self, k, v):
        self.txn.put(k, v)

    def delete(self, k):
        self.txn.delete(k)

    def commit(self):
        self.txn.commit()

    def items(self):
        with self.env.begin() as t:
            return [(bytes(k), bytes(v)) for k, v in t.cursor()]

    def close(self):
        self.env.close()


class Mdbx:
    def __init__(self, d, writemap=True):
        import mdbx

        flags = mdbx.MDBXEnvFlags.MDBX_WRITEMAP if writemap else 0
        self.mdbx = mdbx
        self.env = mdbx.Env(d, flags=flags, maxreaders=16, geometry=mdbx.Geometry(size_upper=256 << 20))
        self.data = os.path.join(d, "mdbx.dat")

    def begin(self):
        self.txn = self.env.start_transaction()
        self.db = self.txn.open_map()

    def put(self, k, v):
        self.db.put(self.txn, k, v)

    def delete(self, k):
        try:
            self.db.delete(self.txn, k)
        except self.mdbx.MDBXErrorExc:
            pass  # not found

    def commit(self):
        self.txn.commit()

    def items(self):
        txn = self.env.ro_transaction()
        cur = txn.cursor(txn.open_map())
        out = [(bytes(k), bytes(v)) for k, v in cur.iter()]
        cur.close()
        txn.abort()
        return out

    def close(self):
        self.env.close()


class Sqlite:
    def __init__(self, d):
        os.makedirs(d, exist_ok=True)
        self.data = os.path.join(d, "chain.db")
        self.db = sqlite3.connect(self.data, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA mmap_size=268435456")
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB)")

    def begin(self):
        self.db.execute("BEGIN")

    def put(self, k, v):
        self.db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (k, v))

    def delete(self, k):
        self.db.execute("DELETE FROM kv WHERE k = ?", (k,))

    def commit(self):
        self.db.execute("COMMIT")

    def items(self):
        return [(bytes(k), bytes(v)) for k, v in self.db.execute("SELECT k, v FROM kv ORDER BY k")]

    def close(self):
        self.db.close()


class Batched:
    """LevelDB (plyvel) and RocksDB (rocksdict): an atomic, synced write batch per height."""

    def __init__(self, d, kind):
        self.kind = kind
        if kind == "leveldb":
            import plyvel

            self.db = plyvel.DB(d, create_if_missing=True)
        else:
            import rocksdict

            self.rocksdict = rocksdict
            self.db = rocksdict.Rdict(d)
        self.data = None

    def begin(self):
        self.batch = self.db.write_batch(sync=True) if self.kind == "leveldb" else self.rocksdict.WriteBatch()

    def put(self, k, v):
        self.batch.put(k, v)

    def delete(self, k):
        self.batch.delete(k)

    def commit(self):
        if self.kind == "leveldb":
            self.batch.write()
        else:
            opts = self.rocksdict.WriteOptions()
            opts.sync = True
            self.db.write(self.batch, opts)

    def items(self):
        if self.kind == "leveldb":
            return list(self.db.iterator())
        return [(bytes(k), bytes(v)) for k, v in self.db.items()]

    def close(self):
        self.db.close()


def open_engine(kind, d):
    if kind == "lmdb":
        return Lmdb(d, False)
    if kind == "lmdb-writemap":
        return Lmdb(d, True)
    if kind == "mdbx-writemap":
        return Mdbx(d)
    if kind == "sqlite-wal-mmap":
        return Sqlite(d)
    return Batched(d, kind)


def ops(h):
    """Height h's writes: puts and deletes over the key space, values naming the height."""
    r = random.Random(h)
    out = []
    for _ in range(300):
        k = b"key%06d" % r.randrange(KEYS)
        if r.random() < 0.1:
            out.append((k, None))
        else:
            out.append((k, b"h%d:" % h + r.randbytes(r.randrange(50, 3000))))
    return out


def pmd_kb(path):
    if path is None:
        return 0
    inside, total = False, 0
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            inside = line.rstrip().endswith(path)
        elif inside and head == "FilePmdMapped:":
            total += int(line.split()[1])
    return total


def copy_in_chunks(src, dst):
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        with open(os.path.join(src, name), "rb") as a, open(os.path.join(dst, name), "wb") as b:
            shutil.copyfileobj(a, b, 2 << 20)
            b.flush()
            os.fsync(b.fileno())
    shutil.rmtree(src)


def run(kind, d):
    model = {}
    load = d + ".load"
    e = open_engine(kind, load)
    r = random.Random(0)
    e.begin()
    for i in range(KEYS):
        k, v = b"key%06d" % i, r.randbytes(LOAD_VALUE)
        e.put(k, v)
        model[k] = v
    e.commit()
    e.close()
    copy_in_chunks(load, d)
    e = open_engine(kind, d)
    assert e.items() == sorted(model.items()), "loaded data differs"
    pending = None
    print("ready", digest(sorted(model.items())), pmd_kb(e.data), flush=True)
    for line in sys.stdin:
        cmd, h = line.split()
        h = int(h)
        todo = ops(h)
        if cmd == "begin":
            e.begin()
            for k, v in todo[: len(todo) // 2]:
                e.put(k, v) if v is not None else e.delete(k)
            pending = h
        elif cmd == "commit":
            if pending != h:
                e.begin()
                first = 0
            else:
                first = len(todo) // 2
            for k, v in todo[first:]:
                e.put(k, v) if v is not None else e.delete(k)
            e.commit()
            pending = None
            for k, v in todo:
                if v is None:
                    model.pop(k, None)
                else:
                    model[k] = v
            want = sorted(model.items())
            if e.items() != want:
                sys.exit("engine state differs from the model after height %d" % h)
        print("ok", digest(sorted(model.items())), pmd_kb(e.data), flush=True)


def main():
    mode, kind, d = sys.argv[1:4]
    if mode == "run":
        run(kind, d)
    else:
        e = open_engine(kind, d)
        print(digest(e.items()))
        e.close()


main()
