#!/usr/bin/env python3
"""Forge example client: submit, wait for, inspect, watch and cancel graphs.

A small library (ForgeClient) plus a command line:

    forge_client.py [--server HOST:PORT] submit FILE [--wait] [--request-id ID]
    forge_client.py [--server HOST:PORT] wait GRAPH_ID
    forge_client.py [--server HOST:PORT] get GRAPH_ID
    forge_client.py [--server HOST:PORT] watch GRAPH_ID
    forge_client.py [--server HOST:PORT] cancel GRAPH_ID [--reason TEXT]

FILE is a graph in JSON, mapped one to one onto forge.v1.GraphSpec by the
proto JSON mapping (field names as in types.proto, e.g. "depends_on").

Exit codes: 0 = done (for submit --wait and wait: the graph SUCCEEDED),
1 = the graph ended in another state, 2 = usage, input or gRPC error
(printed as "forge_client: CODE: message").

The stubs come from the build (target forge_python_stubs): run with
PYTHONPATH=<build>/python.
"""

import argparse
import os
import sys

import grpc
from google.protobuf import json_format

from forge.v1 import orchestrator_pb2 as orch
from forge.v1 import orchestrator_pb2_grpc as orch_grpc
from forge.v1 import types_pb2 as types


class ForgeClient:
    """Thin wrapper over the Orchestrator stub."""

    def __init__(self, target):
        self._channel = grpc.insecure_channel(target)
        self._stub = orch_grpc.OrchestratorStub(self._channel)

    def close(self):
        self._channel.close()

    def submit(self, spec, request_id=""):
        """Submits a GraphSpec; returns the graph id."""
        reply = self._stub.SubmitGraph(
            orch.SubmitGraphRequest(graph=spec, request_id=request_id))
        return reply.graph_id

    def wait(self, graph_id, timeout=None):
        """Blocks until the graph is terminal (or `timeout` seconds pass:
        DEADLINE_EXCEEDED); returns the graph with its tasks."""
        reply = self._stub.WaitGraph(
            orch.WaitGraphRequest(graph_id=graph_id, view=orch.FULL),
            timeout=timeout)
        return reply.graph

    def get(self, graph_id):
        return self._stub.GetGraph(
            orch.GetGraphRequest(graph_id=graph_id, view=orch.FULL)).graph

    def watch(self, graph_id, replay=True):
        """Yields the graph's events, from the first one when replay is set;
        ends once the graph is terminal and its last event was sent."""
        request = orch.WatchRequest(
            graph=orch.GraphWatch(graph_id=graph_id, replay=replay))
        for response in self._stub.Watch(request):
            yield from response.events

    def cancel(self, graph_id, reason=""):
        """Cancels the graph; returns its state after the cancel."""
        return self._stub.CancelGraph(
            orch.CancelGraphRequest(graph_id=graph_id, reason=reason)).state


def load_graph(path):
    """Reads a JSON graph file into a GraphSpec."""
    with open(path, encoding="utf-8") as f:
        return json_format.Parse(f.read(), types.GraphSpec())


def state_name(state):
    return types.GraphState.Name(state).replace("GRAPH_STATE_", "")


def format_event(e):
    """One line per event: seq, type, then the fields that are set."""
    parts = [f"seq={e.seq}", types.EventType.Name(e.type)]
    if e.task:
        parts += [f"task={e.task}", f"attempt={e.attempt}"]
    if e.worker_id:
        parts.append(f"worker={e.worker_id}")
    if e.HasField("error") and e.error.code:
        parts.append(f"error={e.error.code}: {e.error.message}")
    if e.message:
        parts.append(f"message={e.message}")
    return " ".join(parts)


def report(graph):
    """Prints the final state (stdout) and failed tasks (stderr); returns the
    exit code."""
    print(state_name(graph.state))
    for t in graph.tasks:
        if t.state == types.FAILED:
            print(f"forge_client: task {t.spec.name} FAILED after attempt "
                  f"{t.attempt}: {t.error.code}: {t.error.message}",
                  file=sys.stderr)
    return 0 if graph.state == types.GRAPH_STATE_SUCCEEDED else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="forge_client",
                                     description="Forge example client")
    parser.add_argument("--server",
                        default=os.environ.get("FORGE_SERVER", "127.0.0.1:7070"),
                        help="HOST:PORT of forged (env FORGE_SERVER)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("submit", help="submit a graph from a JSON file")
    p.add_argument("file")
    p.add_argument("--wait", action="store_true",
                   help="wait until the graph is terminal")
    p.add_argument("--request-id", default="", help="idempotency key")
    for name, help_text in (("wait", "wait until a graph is terminal"),
                            ("get", "print a graph as JSON"),
                            ("watch", "print a graph's events, one per line"),
                            ("cancel", "cancel a graph")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("graph_id")
        if name == "cancel":
            p.add_argument("--reason", default="")
    args = parser.parse_args(argv)  # exits 2 on usage errors

    client = ForgeClient(args.server)
    try:
        if args.command == "submit":
            spec = load_graph(args.file)
            graph_id = client.submit(spec, args.request_id)
            print(graph_id, flush=True)
            return report(client.wait(graph_id)) if args.wait else 0
        if args.command == "wait":
            return report(client.wait(args.graph_id))
        if args.command == "get":
            print(json_format.MessageToJson(client.get(args.graph_id),
                                            preserving_proto_field_name=True))
            return 0
        if args.command == "watch":
            for event in client.watch(args.graph_id):
                print(format_event(event), flush=True)
            return 0
        if args.command == "cancel":
            print(state_name(client.cancel(args.graph_id, args.reason)))
            return 0
    except grpc.RpcError as e:
        print(f"forge_client: {e.code().name}: {e.details()}", file=sys.stderr)
        return 2
    except (OSError, json_format.ParseError) as e:
        print(f"forge_client: {getattr(args, 'file', '')}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
    return 2


if __name__ == "__main__":
    sys.exit(main())
