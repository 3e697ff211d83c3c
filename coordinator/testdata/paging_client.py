"""A gRPC client that knows nothing of hostplane but what server reflection
tells it (Python's grpcio, grpcio-reflection and protobuf's json_format).

Creates nodes, pages through List with a small page_size following
next_page_token, and sends Updates whose JSON is written as docs/api.md
shows it (a FieldMask in its proto3 JSON form, "metadata.labels",
"spec.rebootMethod"). Prints one JSON object of what it saw; the Rust test
(coordinator/tests/api_pagination.rs) checks it.

Usage: paging_client.py HOST:PORT NODES PAGE_SIZE
"""
import json
import sys

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

TIMEOUT = 20


def main():
    addr, nodes, page_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    channel = grpc.insecure_channel(addr)
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    admin = pool.FindServiceByName("hostplane.v1.AdminService")
    kind_node = pool.FindEnumTypeByName("hostplane.v1.Kind").values_by_name["KIND_NODE"].number

    def method(name):
        m = admin.methods_by_name[name]
        req = message_factory.GetMessageClass(m.input_type)
        resp = message_factory.GetMessageClass(m.output_type)
        call = channel.unary_unary(
            f"/{admin.full_name}/{m.name}",
            request_serializer=req.SerializeToString,
            response_deserializer=resp.FromString,
        )
        return req, lambda r: call(r, timeout=TIMEOUT)

    create_req, create = method("Create")
    list_req, list_ = method("List")
    update_req, update = method("Update")
    get_req, get = method("Get")

    for i in range(nodes):
        create(
            json_format.Parse(
                json.dumps(
                    {
                        "resource": {
                            "node": {
                                "metadata": {"name": f"n{i:03}", "labels": {"rack": f"r{i % 3}"}},
                                "spec": {"rebootMethod": "REBOOT_METHOD_AGENT"},
                            }
                        }
                    }
                ),
                create_req(),
            )
        )

    out = {"pages": [], "versions": []}
    token = ""
    while True:
        page = list_(list_req(kind=kind_node, page_size=page_size, page_token=token))
        out["pages"].append([r.node.metadata.name for r in page.items])
        out["versions"].append(page.resource_version)
        token = page.next_page_token
        if not token:
            break

    def node_json(name):
        return json.loads(json_format.MessageToJson(get(get_req(kind=kind_node, name=name)).node))

    out["before"] = node_json("n001")
    # docs/api.md: only the labels (the spec and generation stay as they are).
    update(
        json_format.Parse(
            '{"resource":{"node":{"metadata":{"name":"n001","labels":{"rack":"r7"}}}},'
            '"updateMask":"metadata.labels"}',
            update_req(),
        )
    )
    out["labels_only"] = node_json("n001")
    # A JSON mask in camelCase reaches the server as proto names.
    update(
        json_format.Parse(
            '{"resource":{"node":{"metadata":{"name":"n001"},'
            '"spec":{"rebootMethod":"REBOOT_METHOD_EXTERNAL"}}},"updateMask":"spec.rebootMethod"}',
            update_req(),
        )
    )
    out["spec_only"] = node_json("n001")
    try:
        req = update_req()
        req.resource.node.metadata.name = "n001"
        req.update_mask.paths.append("spec.no_such_field")
        update(req)
        out["unknown_path"] = {"code": "OK", "message": ""}
    except grpc.RpcError as e:
        out["unknown_path"] = {"code": e.code().name, "message": e.details() or ""}
    try:
        list_(list_req(kind=kind_node, page_size=page_size, page_token="00" + token + "ff"))
        out["bad_token"] = {"code": "OK", "message": ""}
    except grpc.RpcError as e:
        out["bad_token"] = {"code": e.code().name, "message": e.details() or ""}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
