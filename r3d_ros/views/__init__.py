"""Dynamic view selection (3D-R1 §3.3, Eq. 6-7): candidate cameras, a torch point-splatting renderer, and the
question-aware scores that pick the top-k views for the reasoner. Free of ROS imports."""

from r3d_ros.views.cameras import Intrinsics, frustum_segments, ring_poses, top_down_pose
from r3d_ros.views.renderer import Render, render_points
from r3d_ros.views.scoring import ClipAlignment, ViewScoreWeights
from r3d_ros.views.selector import (
    ScoredCandidates,
    SelectedView,
    ViewSelection,
    ViewSelector,
    ViewSelectorConfig,
    load_aligner,
)

__all__ = ['ClipAlignment', 'Intrinsics', 'Render', 'ScoredCandidates', 'SelectedView', 'ViewScoreWeights',
           'ViewSelection', 'ViewSelector', 'ViewSelectorConfig', 'frustum_segments', 'load_aligner', 'render_points',
           'ring_poses', 'top_down_pose']
