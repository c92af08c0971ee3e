"""ament_python build of r3d_ros (works with colcon and with a plain pip install)."""

from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'r3d_ros'


def tree(src):
    """(install dir, [files]) pairs for every folder under src, so nested data keeps its layout."""
    pairs = []
    for root, _dirs, files in os.walk(src):
        files = [os.path.join(root, f) for f in files if not f.endswith('.pyc')]
        if files:
            pairs.append((os.path.join('share', PACKAGE, root), files))
    return pairs


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, f'{PACKAGE}.*', 'training', 'training.*']),
    include_package_data=True,
    package_data={PACKAGE: ['assets/**/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.launch.py')),
        *tree('config'),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='r3d_ros maintainers',
    maintainer_email='maintainers@r3d-ros.invalid',
    description='3D scene reasoning (3D-R1) for ROS 2: mapping, view selection, VLM reasoning, training.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            # nodes (ros2 run r3d_ros <name>)
            'sim_sensor = r3d_ros.nodes.sim_sensor_node:main',
            'scene_map = r3d_ros.nodes.scene_map_node:main',
            'reasoner = r3d_ros.nodes.reasoner_node:main',
            # command-line tools
            'r3d-bringup = r3d_ros.nodes.bringup:main',
            'r3d-demo = r3d_ros.nodes.demo:main',
            'r3d-ask = r3d_ros.nodes.ask_client:main',
            'r3d-make-data = r3d_ros.scenes.cli:main',
            'r3d-train-aligner = r3d_ros.views.train_aligner:main',
            'r3d-record = r3d_ros.nodes.recorder:main',
            'r3d-play = r3d_ros.nodes.player:main',
            'r3d-eval = r3d_ros.evaluation.cli:main',
            'r3d-train = training.cli:main',
        ],
    },
)
