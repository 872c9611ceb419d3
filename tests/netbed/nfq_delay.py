#!/usr/bin/env python3
"""Userspace stand-in for `tc netem delay/loss` (sch_netem is not in this kernel).

Binds NFQUEUE <num> over raw netlink (no libraries), holds every queued packet
for DELAY ms, then accepts it (or drops it with probability LOSS %).  Packets
stay in the kernel; we only delay the verdict.  Constant delay => FIFO order.
Usage: nfq_delay.py QUEUE DELAY_MS LOSS_PCT MAX_SECONDS
Exits after MAX_SECONDS (bounded), or on SIGTERM/SIGINT.  If it dies, rules
with `--queue-bypass` let packets through again (fails open = heals).
"""
import collections, random, select, signal, socket, struct, sys, time

q, delay, loss, maxs = int(sys.argv[1]), float(sys.argv[2]) / 1000, float(sys.argv[3]), float(sys.argv[4])
NFNL_SUBSYS_QUEUE, MSG_PACKET, MSG_VERDICT, MSG_CONFIG = 3, 0, 1, 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4

def attr(t, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, t) + payload + b"\0" * ((4 - n % 4) % 4)

def msg(mtype, attrs, flags=NLM_F_REQUEST):
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(q)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | mtype, flags, 0, 0) + body

s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
s.bind((0, 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.send(msg(MSG_CONFIG, attr(1, struct.pack("=BBH", 1, 0, 0)), NLM_F_REQUEST | NLM_F_ACK))  # CMD_BIND
s.send(msg(MSG_CONFIG, attr(2, struct.pack(">IB", 0, 1)) + attr(3, struct.pack(">I", 8192))))  # COPY_META, maxlen
stop = False
def _stop(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, _stop); signal.signal(signal.SIGINT, _stop)
print(f"nfq_delay: queue {q} delay {delay*1000:.0f}ms loss {loss}%", flush=True)

pending = collections.deque()  # (due_time, packet_id)
def verdict(pid, v):
    s.send(msg(MSG_VERDICT, attr(2, struct.pack(">II", v, pid))))

end = time.monotonic() + maxs
while not stop and time.monotonic() < end:
    now = time.monotonic()
    while pending and pending[0][0] <= now:
        _, pid = pending.popleft()
        verdict(pid, 0 if random.random() * 100 < loss else 1)  # NF_DROP=0, NF_ACCEPT=1
    wait = max(0.0, min(pending[0][0] - now if pending else 0.2, end - now))
    if not select.select([s], [], [], wait)[0]:
        continue
    data = s.recv(1 << 16)
    off = 0
    while off + 16 <= len(data):
        ln, mt, _, _, _ = struct.unpack_from("=IHHII", data, off)
        if ln < 16:
            break
        if mt == ((NFNL_SUBSYS_QUEUE << 8) | MSG_PACKET):
            a = off + 20
            while a + 4 <= off + ln:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype & 0x7FFF == 1:  # NFQA_PACKET_HDR: id(be32) hwproto(be16) hook(u8)
                    pending.append((time.monotonic() + delay, struct.unpack_from(">I", data, a + 4)[0]))
                a += (alen + 3) & ~3
        elif mt == 2:  # NLMSG_ERROR: error code 0 is the ACK for BIND
            err = struct.unpack_from("=i", data, off + 16)[0]
            if err:
                sys.exit(f"nfq_delay: netlink error {err}")
        off += (ln + 3) & ~3
for _, pid in pending:  # heal: release everything still held
    verdict(pid, 1)
