"""PointCloud2 codec: round trips (hypothesis), every datatype, layouts, and malformed-input fuzzing."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np
import pytest
from sensor_msgs.msg import PointCloud2, PointField

from r3d_ros.nodes.conversions import to_pointcloud2
from r3d_ros.pointcloud import (
    DATATYPES,
    CloudData,
    FieldSpec,
    PointCloudError,
    cloud_from_structured,
    cloud_from_xyz_rgb,
    cloud_to_structured,
    pack_rgb,
    read_fields,
    xyz_rgb_from_cloud,
)

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), data=st.data())
def test_xyz_rgb_round_trip(n, data):
    xyz = data.draw(hnp.arrays(np.float32, (n, 3), elements=finite))
    rgb = data.draw(hnp.arrays(np.uint8, (n, 3)))
    cloud = cloud_from_xyz_rgb(xyz, rgb)
    xyz2, rgb2 = xyz_rgb_from_cloud(cloud)
    np.testing.assert_array_equal(xyz2, xyz)
    np.testing.assert_array_equal(rgb2, rgb)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 50), big=st.booleans(), pad=st.integers(0, 7), data=st.data())
def test_every_datatype_with_count_padding_and_byte_order(n, big, pad, data):
    order = '>' if big else '<'
    kinds = data.draw(st.lists(st.sampled_from(sorted(DATATYPES)), min_size=1, max_size=4))
    counts = data.draw(st.lists(st.integers(1, 3), min_size=len(kinds), max_size=len(kinds)))
    names, formats, offsets, off = ['x', 'y', 'z'], [order + 'f4'] * 3, [0, 4, 8], 12
    for i, (k, c) in enumerate(zip(kinds, counts)):
        names.append(f'f{i}')
        base = DATATYPES[k].newbyteorder(order)
        formats.append((base, (c,)) if c > 1 else base)
        offsets.append(off)
        off += base.itemsize * c + data.draw(st.integers(0, 3))  # gaps between fields
    dtype = np.dtype({'names': names, 'formats': formats, 'offsets': offsets, 'itemsize': off + pad})
    raw = data.draw(hnp.arrays(np.uint8, (n * dtype.itemsize,)))
    arr = np.frombuffer(raw.tobytes(), dtype=dtype).copy()
    for c in 'xyz':
        arr[c] = np.arange(n, dtype=np.float32)
    cloud = cloud_from_structured(arr)
    assert cloud.is_bigendian == big
    fields = read_fields(cloud, names[3:])
    for name in names[3:]:
        expect = arr[name].astype(arr.dtype[name].base.newbyteorder('='))
        got = fields[name]
        assert got.dtype.byteorder in ('=', '|') or got.dtype.isnative
        np.testing.assert_array_equal(got.view(np.uint8), np.ascontiguousarray(expect).view(np.uint8))


def test_organized_cloud_with_row_padding_and_nans():
    h, w, step = 4, 5, 16
    row_step = w * step + 8  # 8 bytes of padding at the end of every row
    buf = bytearray(row_step * h)
    expect = []
    for r in range(h):
        for c in range(w):
            x = float('nan') if (r, c) == (1, 2) else float(r * 10 + c)
            struct.pack_into('<fffI', buf, r * row_step + c * step, x, 1.0, 2.0, 0x00102030)
            if (r, c) != (1, 2):
                expect.append(x)
    cloud = CloudData(h, w, [FieldSpec('x', 0, 7), FieldSpec('y', 4, 7), FieldSpec('z', 8, 7),
                             FieldSpec('rgb', 12, 6)], False, step, row_step, bytes(buf))
    xyz, rgb = xyz_rgb_from_cloud(cloud)
    assert xyz.shape == (h * w - 1, 3)
    np.testing.assert_array_equal(xyz[:, 0], expect)
    assert (rgb == [0x10, 0x20, 0x30]).all()
    xyz_all, _ = xyz_rgb_from_cloud(cloud, skip_nans=False)
    assert xyz_all.shape == (h * w, 3) and np.isnan(xyz_all[7, 0])
    assert cloud_to_structured(cloud).shape == (h, w)


def test_decode_is_zero_copy():
    cloud = cloud_from_xyz_rgb(np.ones((10, 3), np.float32))
    arr = cloud_to_structured(cloud)
    assert not arr.flags.owndata and arr.base is not None


def test_separate_rgb_channels_and_float_packed_rgba():
    dtype = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('r', 'u1'), ('g', 'u1'), ('b', 'u1')])
    arr = np.zeros(3, dtype)
    arr['r'], arr['g'], arr['b'] = [1, 2, 3], [4, 5, 6], [7, 8, 9]
    _, rgb = xyz_rgb_from_cloud(cloud_from_structured(arr))
    np.testing.assert_array_equal(rgb, [[1, 4, 7], [2, 5, 8], [3, 6, 9]])
    dtype = np.dtype([('x', '>f4'), ('y', '>f4'), ('z', '>f4'), ('rgba', '>f4')])
    arr = np.zeros(2, dtype)
    arr['rgba'] = pack_rgb(np.array([[255, 0, 128], [1, 2, 3]], np.uint8))
    _, rgb = xyz_rgb_from_cloud(cloud_from_structured(arr))
    np.testing.assert_array_equal(rgb, [[255, 0, 128], [1, 2, 3]])


def test_real_pointcloud2_message_round_trip():
    xyz = np.random.default_rng(0).normal(size=(1000, 3)).astype(np.float32)
    rgb = np.random.default_rng(1).integers(0, 255, (1000, 3), dtype=np.uint8)
    msg = to_pointcloud2(xyz, rgb, frame_id='map')
    assert isinstance(msg, PointCloud2) and msg.point_step == 16 and msg.width == 1000
    xyz2, rgb2 = xyz_rgb_from_cloud(msg)
    np.testing.assert_array_equal(xyz2, xyz)
    np.testing.assert_array_equal(rgb2, rgb)


def _pf(name, offset, datatype=7):
    return PointField(name=name, offset=offset, datatype=datatype, count=1)


def _msg(**kw):
    m = PointCloud2()
    m.height, m.width, m.point_step, m.row_step = kw.get('h', 1), kw.get('w', 2), kw.get('step', 12), 0
    m.row_step = kw.get('row_step', m.width * m.point_step)
    m.fields = kw.get('fields', [PointField(name=c, offset=4 * i, datatype=7, count=1) for i, c in enumerate('xyz')])
    m.data = bytes(kw.get('n', m.row_step * m.height))
    return m


@pytest.mark.parametrize('kw, match', [
    ({'n': 5}, 'expected row_step'),
    ({'row_step': 10, 'n': 10}, 'row_step 10 <'),
    ({'fields': [_pf('x', 0), _pf('y', 10),
                 _pf('z', 8)]}, 'outside point_step'),
    ({'fields': [_pf('x', 0), _pf('y', 2),
                 _pf('z', 8)]}, 'overlap'),
    ({'fields': [_pf('x', 0), _pf('y', 4)]},
     "no 'z'"),
    ({'fields': [PointField(name=c, offset=4 * i, datatype=9 if c == 'y' else 7, count=1)
                 for i, c in enumerate('xyz')]}, 'unknown datatype'),
    ({'w': 1 << 20, 'h': 1 << 10, 'n': 0, 'row_step': 0}, 'absurd'),
    ({'step': 1 << 20, 'w': 0, 'n': 0}, 'absurd'),
])
def test_malformed_messages_raise_codec_error(kw, match):
    with pytest.raises(PointCloudError, match=match):
        xyz_rgb_from_cloud(_msg(**kw))


class _Field:
    def __init__(self, name, offset, datatype, count):
        self.name, self.offset, self.datatype, self.count = name, offset, datatype, count


class _Cloud:
    pass


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_random_messages_only_raise_codec_error(data):
    """Arbitrary layouts and byte strings: decode either succeeds or raises PointCloudError."""
    ints = st.one_of(st.integers(-5, 70), st.integers(-(1 << 40), 1 << 40), st.just(None), st.text(max_size=3))
    m = _Cloud()
    m.height, m.width, m.point_step, m.row_step = (data.draw(ints) for _ in range(4))
    m.is_bigendian = data.draw(st.booleans())
    m.fields = data.draw(st.lists(st.builds(
        _Field, st.one_of(st.sampled_from(['x', 'y', 'z', 'rgb', 'rgba', 'r', 'g', 'b', 'i']), st.text(max_size=2)),
        ints, ints, ints), max_size=6))
    m.data = data.draw(st.one_of(st.binary(max_size=400), st.just(None), st.integers(), st.lists(st.integers(0, 255))))
    try:
        xyz_rgb_from_cloud(m)
    except PointCloudError:
        pass
    try:
        read_fields(m, ['x', 'i'])
    except PointCloudError:
        pass


@pytest.mark.parametrize('step, ox', [(16, 0), (32, 0), (32, 8), (20, 0)])
def test_non_finite_points_dropped_on_every_layout(step, ox):
    """The contiguous fast path (16/32-byte points) and the general path drop exactly the bad rows."""
    n = 200
    dtype = np.dtype({'names': ['x', 'y', 'z', 'rgb'], 'formats': ['<f4', '<f4', '<f4', '<u4'],
                      'offsets': [ox, ox + 4, ox + 8, ox + 12], 'itemsize': step})
    arr = np.zeros(n, dtype)
    rng = np.random.default_rng(step + ox)
    for c in 'xyz':
        arr[c] = rng.normal(size=n)
    arr['rgb'] = 0xFF00FF00  # alpha byte set: the packed colour's float bits are NaN, which must not matter
    bad = rng.choice(n, 17, replace=False)
    for j, i in enumerate(bad):
        arr['xyz'[j % 3]][i] = (np.nan, np.inf, -np.inf)[j % 3]
    xyz, rgb = xyz_rgb_from_cloud(cloud_from_structured(arr))
    keep = np.setdiff1d(np.arange(n), bad)
    np.testing.assert_array_equal(xyz, np.stack([arr[c][keep] for c in 'xyz'], axis=1))
    assert (rgb == [0, 255, 0]).all() and len(rgb) == len(keep)
