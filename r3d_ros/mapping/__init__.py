"""Scene map library: voxel-hashed colour map and pose interpolation (no ROS imports)."""

from r3d_ros.mapping.pose_buffer import PoseBuffer
from r3d_ros.mapping.voxel_map import MapStats, VoxelMap

__all__ = ['MapStats', 'PoseBuffer', 'VoxelMap']
