#!/usr/bin/env python3
"""Instructions per request from a callgrind dump, for `INSNS=1 benches/sidecar.sh`.

usage: callgrind_self.py DUMP REQUESTS [TOP]

Prints one line of totals per request, split into RSA/bignum (the signature the request
cannot do without), the rest of aws-lc (SHA-256, TLS's AES-GCM) and everything else, then
the TOP functions of "everything else" by their own (self) instructions per request.

Why instructions: on a shared 2-vCPU KVM machine the CPU time of one request moves by
20-40 % between two runs of one binary; the instructions it executes under callgrind do
not (well under 1 %), so a change of a few microseconds can be shown. Under valgrind aws-lc
takes its AVX2 RSA path (valgrind hides the BMI2/ADX the native mulx path needs), so the RSA
figure is not the native one: compare the rest.
"""
import collections
import re
import sys

RSA = re.compile(r"aws_lc.*(bn_|BN_|rsaz|RSA|rsa_)|^bn_|^__bn|mulx4x|sqrx8x")
AWS_LC = re.compile(r"aws_lc|aesni|ghash|sha256")


def self_costs(path):
    """Self cost (Ir) per function name; the inclusive cost lines of calls are skipped."""
    names, cost = {}, collections.Counter()
    fn, after_calls = None, False

    def name(ref):
        m = re.match(r"\((\d+)\)(?: (.*))?", ref)
        if not m:
            return ref
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), ref)

    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("fn="):
                fn = name(line[3:])
            elif line.startswith("cfn="):
                name(line[4:])
            elif line.startswith("calls="):
                after_calls = True
            elif line and (line[0].isdigit() or line[0] in "+-*"):
                if after_calls:
                    after_calls = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and fn:
                    cost[fn] += int(parts[1])
    return cost


def main():
    path, requests = sys.argv[1], float(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 12
    cost = self_costs(path)
    buckets = collections.Counter()
    for fn, ir in cost.items():
        kind = "rsa" if RSA.search(fn) else "aws-lc" if AWS_LC.search(fn) else "rest"
        buckets[kind] += ir
    total = sum(cost.values())
    per = lambda v: f"{v / requests:,.0f}"
    print(
        f"{per(total)} instructions/request: RSA/bignum {per(buckets['rsa'])}, "
        f"aws-lc other {per(buckets['aws-lc'])}, the rest {per(buckets['rest'])}"
    )
    rest = [(fn, ir) for fn, ir in cost.most_common() if not RSA.search(fn) and not AWS_LC.search(fn)]
    for fn, ir in rest[:top]:
        print(f"    {per(ir):>9}  {fn[:140]}")


if __name__ == "__main__":
    main()
