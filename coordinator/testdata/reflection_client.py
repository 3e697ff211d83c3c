"""A gRPC client that knows nothing of hostplane but what the server tells it.

Lists the services through server reflection, both grpc.reflection.v1alpha
(Python's stock client, grpcurl 1.8) and grpc.reflection.v1 (the same
messages under the v1 service name), builds AdminService's request types
from the reflected descriptors alone, and sends requests the coordinator
must refuse. Prints one JSON object of what it saw; the Rust test
(coordinator/tests/api_reflection_client.rs) checks it.

Usage: reflection_client.py HOST:PORT
"""
import json
import sys

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

TIMEOUT = 20


def list_services(channel, method):
    call = channel.stream_stream(
        method,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    try:
        responses = call(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            timeout=TIMEOUT,
        )
        first = next(iter(responses))
        return sorted(s.name for s in first.list_services_response.service)
    except grpc.RpcError as e:
        return {"error": e.code().name, "message": e.details() or ""}


def status_of(fn):
    try:
        fn()
        return {"code": "OK", "message": ""}
    except grpc.RpcError as e:
        return {"code": e.code().name, "message": e.details() or ""}


def main():
    channel = grpc.insecure_channel(sys.argv[1])
    out = {
        "v1alpha": list_services(
            channel, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        ),
        "v1": list_services(
            channel, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ),
    }

    # Everything below comes from the reflected descriptors (v1alpha).
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    admin = pool.FindServiceByName("hostplane.v1.AdminService")
    kind_node = pool.FindEnumTypeByName("hostplane.v1.Kind").values_by_name["KIND_NODE"].number

    def method(name):
        m = admin.methods_by_name[name]
        req = message_factory.GetMessageClass(m.input_type)
        resp = message_factory.GetMessageClass(m.output_type)
        path = f"/{admin.full_name}/{m.name}"
        call = channel.unary_unary(
            path, request_serializer=req.SerializeToString, response_deserializer=resp.FromString
        )
        raw = channel.unary_unary(
            path, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        return req, call, raw

    delete_req, delete, delete_raw = method("Delete")
    create_req, create, _ = method("Create")
    huge = "n" * (1 << 20)
    out["oversized_name"] = status_of(
        lambda: delete(delete_req(kind=kind_node, name=huge), timeout=TIMEOUT)
    )
    node = create_req()
    node.resource.node.metadata.name = "n1"
    node.resource.node.metadata.labels["k" * 20000] = "v"
    out["oversized_label_key"] = status_of(lambda: create(node, timeout=TIMEOUT))
    # Bytes that are no protobuf message: a varint that never ends.
    out["malformed"] = status_of(lambda: delete_raw(b"\xff" * 16, timeout=TIMEOUT))
    # A well-formed request over the 4 MiB a call may carry.
    big = delete_req(kind=kind_node, name="n" * (5 << 20)).SerializeToString()
    out["too_large"] = status_of(lambda: delete_raw(big, timeout=TIMEOUT))
    # The server still answers normally afterwards.
    out["after"] = status_of(lambda: delete(delete_req(kind=kind_node, name="n1"), timeout=TIMEOUT))

    # Issue 14's fields, built from the reflected descriptors only: a Flavor
    # with DPF-shaped nvconfig and DPU OS settings, read back with Get; one
    # whose two "*" entries contradict; MarkRebooted's power_cycled.
    kind_flavor = pool.FindEnumTypeByName("hostplane.v1.Kind").values_by_name["KIND_FLAVOR"].number
    flavor = create_req()
    f = flavor.resource.flavor
    f.metadata.name = "f-py"
    e = f.spec.nvconfig.add()
    e.device = "*"
    e.parameters.extend(["PF_TOTAL_SF=20", "PER_PF_NUM_SF=1"])
    e.host_power_cycle_required = True
    f.spec.dpu_os.grub.kernel_parameters.append("hugepages=3072")
    cf = f.spec.dpu_os.config_files.add()
    cf.path = "/etc/hp-py.conf"
    cf.raw = "x=1\n"
    cf.permissions = "0600"
    out["flavor_create"] = status_of(lambda: create(flavor, timeout=TIMEOUT))
    get_req, get, _ = method("Get")
    try:
        got = get(get_req(kind=kind_flavor, name="f-py"), timeout=TIMEOUT).flavor.spec
        out["flavor_got"] = {
            "nvconfig": [
                {
                    "device": x.device,
                    "parameters": list(x.parameters),
                    "power_cycle": x.host_power_cycle_required,
                }
                for x in got.nvconfig
            ],
            "kernel_parameters": list(got.dpu_os.grub.kernel_parameters),
            "files": [[c.path, c.raw, c.permissions] for c in got.dpu_os.config_files],
        }
    except grpc.RpcError as err:
        out["flavor_got"] = {"error": err.code().name, "message": err.details() or ""}
    bad = create_req()
    b = bad.resource.flavor
    b.metadata.name = "f-py-bad"
    for value in ["20", "4"]:
        x = b.spec.nvconfig.add()
        x.device = "*"
        x.parameters.append("PF_TOTAL_SF=" + value)
    out["flavor_contradicting"] = status_of(lambda: create(bad, timeout=TIMEOUT))
    mark_req, mark, _ = method("MarkRebooted")
    out["mark_rebooted_fields"] = sorted(x.name for x in mark_req.DESCRIPTOR.fields)
    out["mark_rebooted_missing"] = status_of(
        lambda: mark(mark_req(name="nope", power_cycled=True), timeout=TIMEOUT)
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
