"""Seeded generators of hostile inputs for the fuzz tests (no ROS imports): malformed PointCloud2 clouds
and malformed reasoner queries.

A cloud starts valid (points of a synthetic scene, in one of the layouts real drivers publish: xyz, xyz+rgb,
padded xyz+intensity, float64, big-endian, organized, split r/g/b) and then has one to three mutations
applied, drawn so that every field of the message is hit: header (frame id, stamp), height, width, fields
(name, offset, datatype, count; dropped, repeated, added, shuffled), is_bigendian, point_step, row_step,
data (truncated, extended, random bytes, bit flips, absurd and non-finite coordinates) and is_dense.
Values stay inside the message's own field types (uint32, uint8, int32), which is all a publisher can send.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
import json

import numpy as np

from r3d_ros.pointcloud import FLOAT32, FLOAT64, UINT8, UINT32, FieldSpec, cloud_from_structured

U32 = (1 << 32) - 1
ABSURD = np.array([np.nan, np.inf, -np.inf, 1e20, -1e20, 3e38, -3e38, 1e7, -1e7, 1e-45, -0.0, 5e4],
                  np.float64)
LAYOUTS = ('xyz', 'xyzrgb', 'xyzi_padded', 'xyz64', 'bigendian', 'organized', 'split_rgb', 'rgba_u32')
MUTATIONS = ('frame_id', 'stamp', 'height', 'width', 'fields', 'is_bigendian', 'point_step', 'row_step',
             'data', 'is_dense', 'absurd', 'absurd', 'absurd')  # absurd values: the case, drawn more


@dataclass
class Cloud:
    """A PointCloud2 as plain values (``fields`` as FieldSpec), convertible to a message by the caller."""

    height: int
    width: int
    fields: list
    is_bigendian: bool
    point_step: int
    row_step: int
    data: bytes
    is_dense: bool = True
    frame_id: str = 'map'
    stamp: tuple[int, int] = (0, 0)
    mutations: list = field(default_factory=list)


def _structured(layout: str, xyz: np.ndarray, rgb: np.ndarray, rng) -> np.ndarray:
    n = len(xyz)
    if layout == 'xyz64':
        arr = np.zeros(n, [('x', 'f8'), ('y', 'f8'), ('z', 'f8')])
    elif layout == 'bigendian':
        arr = np.zeros(n, [('x', '>f4'), ('y', '>f4'), ('z', '>f4'), ('rgb', '>u4')])
    elif layout == 'xyzi_padded':
        arr = np.zeros(n, {'names': ['x', 'y', 'z', 'intensity'], 'formats': ['f4'] * 4,
                           'offsets': [0, 4, 8, 16], 'itemsize': 32})
    elif layout == 'split_rgb':
        arr = np.zeros(n, [('x', 'f4'), ('y', 'f4'), ('z', 'f4'), ('r', 'u1'), ('g', 'u1'), ('b', 'u1')])
    elif layout in ('xyzrgb', 'organized'):
        arr = np.zeros(n, [('x', 'f4'), ('y', 'f4'), ('z', 'f4'), ('rgb', 'u4')])
    elif layout == 'rgba_u32':
        arr = np.zeros(n, [('x', 'f4'), ('y', 'f4'), ('z', 'f4'), ('rgba', 'u4')])
    else:
        arr = np.zeros(n, [('x', 'f4'), ('y', 'f4'), ('z', 'f4')])
    for i, c in enumerate('xyz'):
        arr[c] = xyz[:, i]
    packed = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2]
    for name in ('rgb', 'rgba'):
        if name in arr.dtype.names:
            arr[name] = packed
    if layout == 'split_rgb':
        for i, c in enumerate('rgb'):
            arr[c] = rgb[:, i]
    if 'intensity' in arr.dtype.names:
        arr['intensity'] = rng.random(n)
    return arr


def valid_cloud(rng, points: np.ndarray, colors: np.ndarray, max_points: int = 1500) -> Cloud:
    """A well-formed cloud of up to ``max_points`` scene points (map frame) in a random layout."""
    n = int(rng.integers(1, max_points))
    pick = rng.integers(0, len(points), n)
    layout = LAYOUTS[rng.integers(len(LAYOUTS))]
    arr = _structured(layout, points[pick], colors[pick], rng)
    if layout == 'organized' and n >= 4:
        arr = arr[:n - n % 4].reshape(4, -1)
    c = cloud_from_structured(arr)
    return Cloud(c.height, c.width, list(c.fields), c.is_bigendian, c.point_step, c.row_step, c.data,
                 stamp=(int(rng.integers(0, 1 << 30)), int(rng.integers(0, 10**9))))


def _absurd(c: Cloud, rng) -> Cloud:
    """Write absurd or non-finite values into some coordinates, leaving the layout intact (a cloud whose
    layout an earlier mutation broke is written where its own fields say, inside the bytes it has)."""
    xyz = [f for f in c.fields if f.name in ('x', 'y', 'z') and f.datatype in (FLOAT32, FLOAT64)]
    n = min(c.height * c.width, len(c.data) // max(1, c.point_step))  # height/width may be mutated to 2**32
    if not xyz or not n or not c.width:
        return c
    data = bytearray(c.data)
    order = '>' if c.is_bigendian else '<'
    for _ in range(int(rng.integers(1, max(2, min(n // 4, 200))))):
        f = xyz[rng.integers(len(xyz))]
        row, col = divmod(int(rng.integers(n)), c.width)
        at = row * c.row_step + col * c.point_step + f.offset
        kind = order + ('f4' if f.datatype == FLOAT32 else 'f8')
        size = np.dtype(kind).itemsize
        if at + size <= len(data):
            with np.errstate(over='ignore'):
                data[at:at + size] = np.array(ABSURD[rng.integers(len(ABSURD))], kind).tobytes()
    return replace(c, data=bytes(data))


def _data(c: Cloud, rng) -> Cloud:
    data = c.data
    how = rng.integers(5)
    if how == 0:
        data = data[:int(rng.integers(0, max(1, len(data))))]                  # truncated
    elif how == 1:
        data = data + rng.bytes(int(rng.integers(1, 64)))                          # trailing garbage
    elif how == 2:
        data = rng.bytes(len(data))                                                # random bytes
    elif how == 3 and data:
        buf = np.frombuffer(data, np.uint8).copy()                                  # bit flips
        at = rng.integers(0, len(buf), int(rng.integers(1, 32)))
        buf[at] ^= (1 << rng.integers(0, 8, len(at))).astype(np.uint8)
        data = buf.tobytes()
    else:
        data = b''
    return replace(c, data=data)


def _int_field(value: int, rng) -> int:
    return int([0, 1, U32, value + 1, max(0, value - 1), rng.integers(0, 1 << 16), value * 2][rng.integers(7)])


def _fields(c: Cloud, rng) -> Cloud:
    fields = list(c.fields)
    how = rng.integers(9)
    i = int(rng.integers(len(fields))) if fields else 0
    if how == 0 and fields:
        fields.pop(i)                                                             # a field missing (maybe x)
    elif how == 1 and fields:
        fields.append(fields[i])                                                  # repeated
    elif how == 2 and fields:
        name = ['', 'x', 'rgb', 'ü' * 3, 'n' * 300, 'y '][rng.integers(6)]
        fields[i] = fields[i]._replace(name=name)
    elif how == 3 and fields:
        fields[i] = fields[i]._replace(offset=_int_field(fields[i].offset, rng))
    elif how == 4 and fields:
        fields[i] = fields[i]._replace(datatype=int(rng.choice([0, 9, 255, UINT8, FLOAT64, UINT32])))
    elif how == 5 and fields:
        fields[i] = fields[i]._replace(count=int(rng.choice([0, 2, 3, U32])))
    elif how == 6:
        fields += [FieldSpec(f'extra{k}', int(rng.integers(0, 64)), FLOAT32, 1) for k in range(300)]
    elif how == 7:
        rng.shuffle(fields)
    else:
        fields = []
    return replace(c, fields=fields)


def mutate(c: Cloud, rng) -> Cloud:
    """The cloud with one to three mutations (their names recorded in ``mutations``)."""
    for _ in range(int(rng.integers(1, 4))):
        what = MUTATIONS[rng.integers(len(MUTATIONS))]
        c.mutations.append(what)
        if what == 'absurd':
            c = _absurd(c, rng)
        elif what == 'data':
            c = _data(c, rng)
        elif what == 'fields':
            c = _fields(c, rng)
        elif what in ('height', 'width', 'point_step', 'row_step'):
            c = replace(c, **{what: _int_field(getattr(c, what), rng)})
        elif what == 'is_bigendian':
            c = replace(c, is_bigendian=not c.is_bigendian)
        elif what == 'is_dense':
            c = replace(c, is_dense=not c.is_dense)
        elif what == 'frame_id':
            c = replace(c, frame_id=['', 'sensor', 'map ', 'ü' * 10, 'x' * 5000][rng.integers(5)])
        else:
            c = replace(c, stamp=(int(rng.choice([-(1 << 31), (1 << 31) - 1, 0])), int(rng.integers(0, 1 << 32))))
    return c


def malformed_clouds(seed: int, points: np.ndarray, colors: np.ndarray):
    """An endless seeded stream of malformed clouds (every fifth one left valid, to keep the map growing)."""
    rng = np.random.default_rng(seed)
    k = 0
    while True:
        cloud = valid_cloud(rng, points, colors)
        yield cloud if k % 5 == 4 else mutate(cloud, rng)
        k += 1


# -- queries -------------------------------------------------------------------------------------------
QUESTION = 'Where is the table?'
# Inputs that once ended the reasoner node (json.loads raised past its parser): in the stream, and checked
# one by one by their own test.
REASONER_CRASHERS = {
    'deeply nested JSON (RecursionError in json.loads)': '{"id": "deep", "x": ' + '[' * 100_000 + ']' * 100_000 + '}',
    'a JSON integer over 4300 digits (ValueError, not JSONDecodeError)': '{"id": ' + '7' * 5000 + '}',
}


def _json_value(rng, depth: int = 0):
    kinds = ['str', 'int', 'float', 'bool', 'null', 'list', 'dict', 'big']
    kind = kinds[rng.integers(len(kinds) if depth < 3 else 5)]
    if kind == 'str':
        return ['', ' ', QUESTION, 'ü' * 50, 'x' * 3000, '\u202e\u0000\x07', '<think>'][rng.integers(7)]
    if kind == 'int':
        return int(rng.choice([0, -1, 2**63, -(2**64)]))
    if kind == 'float':
        return float(rng.choice([1e308, -1e-308, 0.5]))
    if kind == 'bool':
        return bool(rng.integers(2))
    if kind == 'null':
        return None
    if kind == 'big':
        return '9' * 4000
    if kind == 'list':
        return [_json_value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    return {str(k): _json_value(rng, depth + 1) for k in range(int(rng.integers(0, 4)))}


def malformed_query(rng, qid: str) -> str:
    """One hostile `query` payload; JSON objects carry ``qid`` as their id where the mutation keeps one."""
    how = rng.integers(10)
    if how == 0:
        return ['', ' ', '\n\t', '{', '{}', '[]', 'null', '"x"', '{"id":', '}{'][rng.integers(10)]
    if how == 1:
        return 'x' * int(rng.integers(2001, 20_000))                              # over max_query_chars
    if how == 2:
        return ''.join(chr(int(c)) for c in rng.integers(1, 0xD7FF, int(rng.integers(1, 200))))  # any BMP text
    if how == 3:
        return '{' + rng.bytes(int(rng.integers(1, 100))).hex()                  # broken JSON
    if how == 4:
        return json.dumps([qid, QUESTION])                                        # JSON, not an object
    if how == 5:
        return json.dumps({'id': qid, 'question': _json_value(rng), 'task': _json_value(rng)})
    if how == 6:
        return json.dumps({'id': _json_value(rng), 'question': QUESTION})        # id of any type
    if how == 7:
        return json.dumps({'id': qid, 'question': QUESTION, 'extra': _json_value(rng)}) + ' trailing'
    if how == 8:
        if rng.integers(20) == 0:                                                 # past the parser's limits
            return list(REASONER_CRASHERS.values())[int(rng.integers(len(REASONER_CRASHERS)))]
        depth = int(rng.integers(1, 200))                                         # nested, under the limit
        return f'{{"id": "{qid}", "question": {"[" * depth}"q"{"]" * depth}}}'
    return json.dumps({'id': qid, 'question': QUESTION if rng.integers(2) else '   '})  # valid or empty
