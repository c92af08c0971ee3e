"""Synthetic indoor scenes, a simulated depth sensor, Scene-30K-shaped reasoning data and real-format loaders.

* :mod:`.types` - SceneObject, Scene, QARecord and the task names
* :mod:`.synthetic` - ``generate_scene(seed)``: procedural rooms with 5-30 objects
* :mod:`.sensor_sim` - ``SimulatedSensor`` (depth camera / lidar) and trajectories
* :mod:`.qa` - ``generate_qa(scene, seed)``: questions, answers and true chains of thought
* :mod:`.verify` - an independent solver that re-derives answers from geometry
* :mod:`.dataset` - scene store, JSON-lines splits, the paper's quality filter, ``make_dataset``
* :mod:`.loaders` - released Scene-30K JSON lines, ScanNet-style PLY / N x 6 arrays
"""
